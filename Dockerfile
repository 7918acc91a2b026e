# GPU batch image for m3ed-extract (README: "Scaling out").
#   docker build -t m3ed .                               # weights download into /cache on first use
#   docker build -t m3ed:paper --build-arg PREFETCH=paper .   # weights inside the image: no network at run time
#   docker run --gpus all -v /data:/data -v m3ed-cache:/cache m3ed:paper --videos /data/episodes ... --out /data/features
#
# CUDA: torch 2.11.0 from PyPI (Linux x86_64) is a CUDA 13.0 build (torch.version.cuda == "13.0"; it
# depends on nvidia-cuda-runtime 13.0.x, nvidia-cublas 13.x, nvidia-cudnn-cu13 9.x wheels), so the base
# is CUDA 13.0 too; its NVIDIA_REQUIRE_CUDA=cuda>=13.0 makes the container toolkit refuse a host driver
# too old for it (CUDA 13.0 needs driver >= 580). The "base" flavour is CUDA's runtime (cudart) and
# that requirement without the math libraries: the torch wheels bring their own cuBLAS/cuDNN/..., and
# the "runtime" flavour would add a second, unused copy of them (~3 GB). Bump both together.
FROM nvidia/cuda:13.0.2-base-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH \
    HF_HOME=/cache/huggingface TORCH_HOME=/cache/torch M3ED_CACHE=/cache/m3ed \
    HF_HUB_DISABLE_TELEMETRY=1 M3ED_SAMPLE_DIR=/opt/m3ed/samples

# No system ffmpeg: m3ed.media uses the binary of the imageio-ffmpeg wheel (a dependency; it needs no ffprobe),
# the same as in a plain pip install. Debian's ffmpeg package would add about 0.6 GB of libraries.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates wget \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv $VIRTUAL_ENV \
 && echo 'export PATH=/opt/venv/bin:$PATH' > /etc/profile.d/m3ed-venv.sh
# (login shells rebuild PATH from /etc/profile)

# Every dependency comes from pyproject.toml (one source of truth), with the Ray extra. They are
# installed from a stub package first, so that a code change does not reinstall torch.
WORKDIR /opt/m3ed
COPY pyproject.toml README.md ./
RUN mkdir m3ed && touch m3ed/__init__.py \
 && pip install ".[ray]" && pip uninstall -y m3ed && rm -rf m3ed build ./*.egg-info
COPY m3ed ./m3ed
COPY samples ./samples
RUN pip install --no-deps . && pip check && rm -rf build ./*.egg-info

# Non-root. Ubuntu's image has a user "ubuntu" with uid 1000; ours takes its place so that files
# written to bind mounts belong to the usual first user of the host (override with --build-arg UID).
ARG UID=1000
RUN (userdel --remove ubuntu 2>/dev/null || true) \
 && useradd --uid "$UID" --create-home --shell /bin/bash m3ed \
 && mkdir -p /cache /data && chown m3ed:m3ed /cache /data
USER m3ed

# Hub revisions of the paper profile's models, read by m3ed prefetch and by runs.
ARG TEXT_REVISION=5c58d0b8ec1d9014354d691c538661bf00bfdb44
ARG AUDIO_REVISION=99ccb2737be22b8bb50dcfcc39ad4d567fb90cfd
ENV M3ED_TEXT_REVISION=$TEXT_REVISION M3ED_AUDIO_REVISION=$AUDIO_REVISION

# PREFETCH=paper: text and audio models at the revisions above, the TalkNet checkpoint and the
# VGGFace2 face-embedding weights, loaded once through the package's own loaders into /cache.
# Empty (the default): nothing is fetched; a run downloads on first use into the mounted /cache.
ARG PREFETCH=""
RUN if [ -n "$PREFETCH" ]; then m3ed prefetch "$PREFETCH"; fi
# With weights inside the image a run must not reach the hub: a missing model fails at once.
ENV HF_HUB_OFFLINE=${PREFETCH:+1}

# Caches live in one volume. A new named volume starts as a copy of the image's /cache (prefetched
# weights included); a bind mount or a Kubernetes volume starts as it is (fill it once with
# `m3ed prefetch paper`).
VOLUME ["/cache"]
WORKDIR /data
ENTRYPOINT ["m3ed-extract"]
CMD ["--help"]
