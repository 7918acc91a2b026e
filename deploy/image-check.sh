#!/usr/bin/env bash
# Build the Docker image and check it against the repository's virtualenv.
#   deploy/image-check.sh build   build the image from the Dockerfile (docker, else podman)
#   deploy/image-check.sh check   build, run m3ed-extract on the bundled sample inside the image as its user,
#                                 run the same outside (.venv), compare the feature files, print the image size
# Settings (environment): M3ED_IMAGE (tag, default m3ed:check), M3ED_IMAGE_WORK (scratch folder),
# M3ED_BUILD_OPTS (extra build options, e.g. "--build-arg UID=1001"), DEBIAN_MIRROR (stand-in base).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
IMAGE=${M3ED_IMAGE:-m3ed:check}
WORK=${M3ED_IMAGE_WORK:-/var/tmp/m3ed-image-check}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# The Makefile's demo run, without fine-tuning: tiny random models (fixed seed) and the shipped Light-ASD weights.
SAMPLE_ARGS=(--profile tiny --device cpu --asd-model light-asd --no-report)

say() { printf '\n== %s\n' "$*"; }
die() { printf 'image-check: %s\n' "$*" >&2; exit 1; }

# ---- the engine ---------------------------------------------------------------------------------------------
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    ENGINE=(docker)
elif command -v podman >/dev/null 2>&1; then
    # overlay: the vfs driver copies every layer (tens of GB for this image)
    ENGINE=(podman --storage-driver="${M3ED_STORAGE_DRIVER:-overlay}")
else
    die "no container engine: neither a running docker daemon nor podman (Debian: apt-get install podman debootstrap)"
fi
is_podman() { [ "${ENGINE[0]}" = podman ]; }
engine() { "${ENGINE[@]}" "$@"; }
image_exists() { engine image inspect "$1" >/dev/null 2>&1; }

# ---- the base image -----------------------------------------------------------------------------------------
# Base images of the Dockerfile: FROM arguments that are not the name of an earlier stage.
base_images() {
    awk 'toupper($1) == "FROM" { i = 2; if ($i ~ /^--/) i++; if (!($i in stage)) print $i; if (toupper($(i+1)) == "AS") stage[$(i+2)] = 1 }' \
        "$ROOT/Dockerfile" | sort -u
}

# Where no registry answers: a Debian rootfs stands in for the CUDA base, whose runtime the torch wheels bring
# themselves. It is tagged with the base's name, so the Dockerfile builds as is, and labelled, so that the
# images built on it say so.
STAND_IN_LABEL=m3ed.stand-in-base
stand_in_base() {
    local name=$1 rootfs
    command -v debootstrap >/dev/null 2>&1 || die "cannot pull $name and debootstrap is missing to make a stand-in"
    rootfs=$(mktemp -d "$WORK/rootfs.XXXXXX")
    say "registry unreachable: building a Debian bookworm stand-in for $name ($DEBIAN_MIRROR)"
    nice -n 10 debootstrap --variant=minbase bookworm "$rootfs" "$DEBIAN_MIRROR" >"$WORK/debootstrap.log" 2>&1 \
        || die "debootstrap failed: see $WORK/debootstrap.log"
    tar -C "$rootfs" -c . | engine import --change "LABEL $STAND_IN_LABEL=debian-bookworm" - "$name" >/dev/null
    rm -rf "$rootfs"
}

ensure_base() {
    local name qualified
    for name in $(base_images); do
        image_exists "$name" && continue
        # podman resolves no short names without a registries.conf search list: qualify Docker Hub's
        case "${name%%/*}" in *.*|*:*|localhost) qualified=$name ;; *) qualified=docker.io/$name ;; esac
        timeout 300 "${ENGINE[@]}" pull "$qualified" >/dev/null 2>&1 || stand_in_base "$name"
    done
}

# ---- build ----------------------------------------------------------------------------------------------------
build() {
    mkdir -p "$WORK"
    ensure_base
    local opts=()
    # pip inside the build must trust this host's certificate authorities (an intercepting proxy's included).
    # The bundle goes to its own path: mounted over the image's bundle it would break the ca-certificates package.
    # One folder, pip's site configuration folder: a mount point stays in the image, empty.
    local ca=/etc/ssl/certs/ca-certificates.crt
    if is_podman; then
        opts+=(--isolation=chroot)
        if [ -f "$ca" ]; then
            mkdir -p "$WORK/pip-site"
            cp "$ca" "$WORK/pip-site/host-ca.crt"
            printf '[global]\ncert = /etc/xdg/pip/host-ca.crt\n' >"$WORK/pip-site/pip.conf"
            opts+=(-v "$WORK/pip-site:/etc/xdg/pip:ro")
        fi
    fi
    say "building $IMAGE with ${ENGINE[0]}"
    # shellcheck disable=SC2086  # M3ED_BUILD_OPTS is a list of options
    nice -n 10 "${ENGINE[@]}" build "${opts[@]}" ${M3ED_BUILD_OPTS:-} -t "$IMAGE" -f "$ROOT/Dockerfile" "$ROOT"
    local stand_in
    stand_in=$(engine image inspect --format "{{index .Labels \"$STAND_IN_LABEL\"}}" "$IMAGE")
    [ -z "$stand_in" ] || echo "note: $IMAGE is built on a $stand_in stand-in for its CUDA base: for checks, not for GPU hosts" >&2
}

image_size() {
    local bytes
    bytes=$(engine image inspect --format '{{.Size}}' "$IMAGE")
    awk -v image="$IMAGE" -v b="$bytes" 'BEGIN { printf "image %s: %.0f bytes (%.2f GB)\n", image, b, b / 1e9 }'
}

# ---- run inside the image ---------------------------------------------------------------------------------
# `podman run` fails on some hosts (crun: setrlimit RLIMIT_NOFILE: Operation not permitted): probe it once.
can_run_containers() { engine run --rm --entrypoint true "$IMAGE" >/dev/null 2>&1; }

run_with_engine() {  # $1: host folder for the output
    local uid
    uid=$(engine run --rm --entrypoint id "$IMAGE" -u)
    chown "$uid" "$1"
    engine run --rm -v "$1:/data/sample" "$IMAGE" "${SAMPLE_ARGS[@]}" --out /data/sample
}

# Without a container runtime: a container's writable root (podman create + mount, nothing runs), /proc and
# /dev mounted into it, and chroot as the image's user with the image's environment, workdir and entrypoint.
run_with_chroot() {  # $1: host folder for the output
    local out=$1 ctr root user uidgid home workdir
    ctr=$(engine create "$IMAGE")
    root=$(engine mount "$ctr")
    # shellcheck disable=SC2064  # expand now: the names are local
    trap "umount '$root/dev/shm' '$root/dev' '$root/proc' 2>/dev/null; ${ENGINE[*]} rm -f '$ctr' >/dev/null" EXIT
    mount -t proc proc "$root/proc"
    mount --bind /dev "$root/dev"
    mount -t tmpfs -o size=2g shm "$root/dev/shm"
    user=$(engine image inspect --format '{{.Config.User}}' "$IMAGE")
    workdir=$(engine image inspect --format '{{.Config.WorkingDir}}' "$IMAGE")
    local passwd uid gid
    passwd=$(awk -F: -v u="${user:-root}" '$1 == u || $3 == u { print $3, $4, $6; exit }' "$root/etc/passwd")
    [ -n "$passwd" ] || die "user ${user:-root} of $IMAGE is not in its /etc/passwd"
    read -r uid gid home <<<"$passwd"
    uidgid=$uid:$gid
    local env=() entry=()
    mapfile -t env < <(engine image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$IMAGE" | sed '/^$/d')
    mapfile -t entry < <(engine image inspect --format '{{range .Config.Entrypoint}}{{println .}}{{end}}' "$IMAGE" | sed '/^$/d')
    echo "chroot as $user ($uidgid), HOME=$home, in ${workdir:-/}: ${entry[*]} ${SAMPLE_ARGS[*]} --out /data/sample"
    # shellcheck disable=SC2016  # $1 and $@ belong to the inner shell
    env -i "${env[@]}" HOME="$home" USER="$user" \
        chroot --userspec="$uidgid" "$root" /bin/sh -c 'cd "$1" && shift && exec "$@"' sh "${workdir:-/}" \
        "${entry[@]}" "${SAMPLE_ARGS[@]}" --out /data/sample
    cp -a "$root/data/sample/." "$out/"
}

check() {
    build
    rm -rf "$WORK/image-out" "$WORK/venv-out" "$WORK/venv-cache"
    mkdir -p "$WORK/image-out" "$WORK/venv-out"

    say "m3ed-extract on the bundled sample inside $IMAGE"
    local start=$SECONDS
    if can_run_containers; then
        run_with_engine "$WORK/image-out"
    elif is_podman; then
        echo "podman run does not work on this host: running in the image's root with chroot"
        run_with_chroot "$WORK/image-out"
    else
        die "docker cannot run $IMAGE here"
    fi
    echo "inside the image: exit 0 in $((SECONDS - start)) s"

    say "the same outside the image ($ROOT/.venv)"
    [ -x "$ROOT/.venv/bin/m3ed-extract" ] || die "$ROOT/.venv has no m3ed-extract: run make install"
    start=$SECONDS
    HF_HUB_OFFLINE=1 M3ED_CACHE="$WORK/venv-cache" "$ROOT/.venv/bin/m3ed-extract" "${SAMPLE_ARGS[@]}" --out "$WORK/venv-out"
    echo "outside the image: exit 0 in $((SECONDS - start)) s"

    say "comparing the feature files"
    "$ROOT/.venv/bin/python" "$ROOT/deploy/compare_features.py" "$WORK/venv-out/features" "$WORK/image-out/features"

    say "size"
    image_size
}

case "${1:-}" in
    build) build && image_size ;;
    check) check ;;
    *) die "usage: $0 build|check" ;;
esac
