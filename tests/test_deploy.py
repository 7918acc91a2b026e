"""deploy/ manifests, the Slurm scripts, the Dockerfile and ``m3ed prefetch``, checked without a
cluster, a Docker engine or the network: syntax, the settings that matter, and the shell glue run
against stand-in commands."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from m3ed.errors import EXIT_DATA_FAILURES, EXIT_INTERNAL, EXIT_RESOURCES, EXIT_USAGE

yaml = pytest.importorskip("yaml", reason="PyYAML is in the test extra: pip install -e '.[test]'")

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
SLURM = DEPLOY / "slurm"


def load_yaml(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def one(path: Path, kind: str) -> dict:
    docs = [d for d in load_yaml(path) if d.get("kind") == kind]
    assert len(docs) == 1, f"{path.name}: expected one {kind}, found {len(docs)}"
    return docs[0]


def pod_spec(job: dict) -> dict:
    return job["spec"]["template"]["spec"]


def container(spec: dict, name: str | None = None) -> dict:
    containers = spec["containers"]
    return next(c for c in containers if c["name"] == name) if name else containers[0]


def command_line(c: dict) -> str:
    return " ".join(c.get("command", []) + c.get("args", []))


def option(command: str, name: str) -> str:
    """The value of ``--name VALUE`` in a shell command line."""
    words = shlex.split(command.replace("\\\n", " "))
    return words[words.index(name) + 1]


def mounted_claim(spec: dict, c: dict, path: str) -> str:
    """The PersistentVolumeClaim mounted at the longest mount path above ``path``."""
    mounts = [m for m in c["volumeMounts"] if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert mounts, f"{path} is on no mounted volume of container {c['name']}"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert "persistentVolumeClaim" in volume, f"{path} is on volume {volume['name']}, not a PersistentVolumeClaim"
    return volume["persistentVolumeClaim"]["claimName"]


def claims() -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in load_yaml(K8S / "storage.yaml") if d["kind"] == "PersistentVolumeClaim"}


# ---- every manifest ------------------------------------------------------------------------------
MANIFESTS = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))


def test_deploy_has_each_kind_of_manifest():
    kinds = {(d["apiVersion"], d["kind"]) for p in MANIFESTS for d in load_yaml(p)}
    assert {("batch/v1", "Job"), ("ray.io/v1", "RayJob"), ("v1", "PersistentVolumeClaim")} <= kinds


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_manifest_parses_and_names_its_kind(path):
    docs = load_yaml(path)
    assert docs, f"{path} has no YAML document"
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("kind") and doc.get("metadata", {}).get("name"), doc


# ---- Kubernetes Indexed Job ------------------------------------------------------------------------
def extract_job() -> dict:
    return one(K8S / "extract-job.yaml", "Job")


def test_indexed_job_one_gpu_per_shard_and_retries_per_index():
    job = extract_job()
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["backoffLimitPerIndex"] >= 1
    assert "backoffLimit" not in spec, "backoffLimit counts across all indexes; use backoffLimitPerIndex"
    assert pod_spec(job)["restartPolicy"] == "Never", "podFailurePolicy requires restartPolicy Never"
    c = container(pod_spec(job), "extract")
    assert int(c["resources"]["limits"]["nvidia.com/gpu"]) == 1
    command = command_line(c)
    assert "m3ed-extract" in command
    assert int(option(command, "--shards")) == spec["completions"], "--shards must equal completions"
    assert "--shard " not in command, "the shard index comes from JOB_COMPLETION_INDEX"


def test_pod_failure_policy_fails_configuration_errors_and_retries_the_rest():
    job = extract_job()
    rules = job["spec"]["podFailurePolicy"]["rules"]
    by_code = {}
    for rule in rules:
        codes = rule.get("onExitCodes")
        if codes:
            assert codes["operator"] == "In" and codes["containerName"] == "extract", rule
            by_code.update({code: rule["action"] for code in codes["values"]})
    assert by_code.get(EXIT_USAGE) == "FailIndex", "a configuration error must fail its index without retry"
    for code in (EXIT_INTERNAL, EXIT_RESOURCES):
        assert code not in by_code, f"exit {code} must be retried up to backoffLimitPerIndex"
    # exit 1 never reaches the policy (the command maps it to 0), and no rule may retry it for ever
    assert by_code.get(EXIT_DATA_FAILURES) in (None, "FailIndex")
    assert "Ignore" not in by_code.values(), "Ignore on an exit code retries it without limit"


def run_pod_command(c: dict, tmp_path: Path, fake_exit: int) -> tuple[int, list[str]]:
    """Run the container's shell command with a stand-in m3ed-extract that records its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "m3ed-extract"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{tmp_path}/argv"\nexit {fake_exit}\n')
    fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "JOB_COMPLETION_INDEX": "3"}
    result = subprocess.run(c["command"] + c.get("args", []), env=env, capture_output=True, text=True, timeout=30)
    return result.returncode, (tmp_path / "argv").read_text().split("\n")[:-1]


@pytest.mark.parametrize("extract_exit, pod_exit", [(0, 0), (EXIT_DATA_FAILURES, 0), (EXIT_USAGE, EXIT_USAGE),
                                                    (EXIT_INTERNAL, EXIT_INTERNAL), (EXIT_RESOURCES, EXIT_RESOURCES),
                                                    (137, 137)])
def test_pod_exit_status(tmp_path, extract_exit, pod_exit):
    """Data failures (1) are recorded by the run: the index is done. Everything else reaches the
    pod failure policy unchanged."""
    code, argv = run_pod_command(container(pod_spec(extract_job()), "extract"), tmp_path, extract_exit)
    assert code == pod_exit
    assert argv[argv.index("--shards") + 1] == str(extract_job()["spec"]["completions"])


def test_out_and_caches_are_on_shared_volumes():
    job = extract_job()
    spec, c = pod_spec(job), container(pod_spec(job), "extract")
    out = option(command_line(c), "--out")
    volumes = claims()
    for path in (out, "/cache"):
        claim = mounted_claim(spec, c, path)
        assert volumes[claim]["spec"]["accessModes"] == ["ReadWriteMany"], f"{path} must be on a ReadWriteMany volume"


def test_merge_job_merges_the_extract_jobs_out():
    extract = extract_job()
    merge = one(K8S / "merge-job.yaml", "Job")
    out = option(command_line(container(pod_spec(extract), "extract")), "--out")
    mc = container(pod_spec(merge))
    assert mc["command"] == ["m3ed", "merge", out]
    assert mounted_claim(pod_spec(merge), mc, out) == mounted_claim(pod_spec(extract), container(pod_spec(extract)), out)


def test_prefetch_job_fills_the_models_volume():
    job = one(K8S / "prefetch-job.yaml", "Job")
    c = container(pod_spec(job))
    assert c["command"] == ["m3ed", "prefetch", "paper"]
    extract = extract_job()
    assert mounted_claim(pod_spec(job), c, "/cache") == mounted_claim(pod_spec(extract), container(pod_spec(extract)), "/cache")


# ---- Dockerfile -------------------------------------------------------------------------------------
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines = [ln for ln in (ROOT / "Dockerfile").read_text().splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1].strip()) for ln in joined.splitlines() if ln.strip()]


def instructions(name: str) -> list[str]:
    return [args for instruction, args in dockerfile() if instruction == name]


def test_dockerfile_base_image_is_pinned_and_matches_torch_cuda():
    (base,) = instructions("FROM")
    m = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.(\d+)-(base|runtime)-ubuntu(\d+\.\d+)", base)
    assert m, f"base image {base!r}: pin a full CUDA version and OS, e.g. nvidia/cuda:13.0.2-base-ubuntu24.04"
    torch = pytest.importorskip("torch")
    if torch.version.cuda is None:
        pytest.skip("this torch is a CPU build: cannot tell which CUDA the PyPI wheel targets")
    assert f"{m[1]}.{m[2]}" == torch.version.cuda, f"base CUDA {m[1]}.{m[2]} != torch's CUDA {torch.version.cuda}"


def test_rayjob_runs_the_ray_engine_on_gpu_workers_and_a_shared_out():
    job = one(K8S / "rayjob.yaml", "RayJob")
    entry = job["spec"]["entrypoint"]
    assert entry.split()[0] == "m3ed-extract" and option(entry, "--engine") == "ray"
    assert option(entry, "--out").startswith("/data/")
    cluster = job["spec"]["rayClusterSpec"]
    workers = cluster["workerGroupSpecs"][0]
    (worker,) = workers["template"]["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1 and workers["replicas"] >= 1
    for spec in (cluster["headGroupSpec"]["template"]["spec"], workers["template"]["spec"]):
        (c,) = spec["containers"]
        assert mounted_claim(spec, c, "/data") == "m3ed-data"      # the same OUT for the driver and every actor
    ray = pytest.importorskip("ray")
    assert cluster["rayVersion"] == ray.__version__


def test_dockerfile_installs_dependencies_only_from_pyproject():
    pips = [cmd for run in instructions("RUN") for cmd in re.split(r"&&|;", run) if "pip install" in cmd]
    assert pips
    for cmd in pips:
        words = shlex.split(cmd)
        targets = [w for w in words[words.index("install") + 1:] if not w.startswith("-")]
        assert targets and all(t in (".", ".[ray]") for t in targets), \
            f"{cmd.strip()!r}: install the package (pyproject.toml), not a second dependency list"
    assert any(".[ray]" in cmd for cmd in pips), "the image includes the Ray extra"
    assert not list(ROOT.glob("requirements*.txt"))
    copied = [src for args in instructions("COPY") for src in args.split()[:-1]]
    assert "pyproject.toml" in copied
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(dep.startswith("ray") for dep in extras["ray"])


def test_dockerfile_entry_point_user_caches_and_prefetch():
    (entry,) = instructions("ENTRYPOINT")
    assert json.loads(entry) == ["m3ed-extract"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "m3ed-extract" in scripts
    users = instructions("USER")
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    (volume,) = instructions("VOLUME")
    (cache,) = json.loads(volume)
    env = " ".join(instructions("ENV"))
    for var in ("HF_HOME", "TORCH_HOME", "M3ED_CACHE"):
        assert re.search(rf"\b{var}={re.escape(cache)}/", env), f"{var} must be inside the volume {cache}"
    args = {a.split("=", 1)[0]: (a.split("=", 1) + [""])[1].strip('"') for a in instructions("ARG")}
    assert "PREFETCH" in args
    for name in ("TEXT_REVISION", "AUDIO_REVISION"):
        assert re.fullmatch(r"[0-9a-f]{40}", args.get(name, "")), f"ARG {name} must default to a commit hash"
    assert any("m3ed prefetch" in run and "$PREFETCH" in run for run in instructions("RUN"))


def test_dockerignore_keeps_what_the_image_copies():
    patterns = (ROOT / ".dockerignore").read_text().split()
    assert "*" in patterns or ".venv" in patterns, "the virtualenv must stay out of the build context"
    if "*" in patterns:  # allow-list: every COPY source must be re-included
        for args in instructions("COPY"):
            for src in args.split()[:-1]:
                assert f"!{src}" in patterns or f"!{src}/" in patterns, f"{src} is excluded from the build context"


# ---- m3ed prefetch -----------------------------------------------------------------------------------
def run_prefetch(tmp_path: Path, *argv: str, **env: str) -> subprocess.CompletedProcess:
    isolated = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
                "TORCH_HOME": str(tmp_path / "torch"), "M3ED_CACHE": str(tmp_path / "m3ed"), **env}
    return subprocess.run([sys.executable, "-m", "m3ed.pipelines.prefetch", *argv], env=isolated, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_prefetch_help(tmp_path):
    result = run_prefetch(tmp_path, "--help")
    assert result.returncode == 0, result.stderr
    assert "paper" in result.stdout and "--text-revision" in result.stdout


def test_prefetch_offline_with_an_empty_cache_names_the_missing_model(tmp_path):
    revision = "5c58d0b8ec1d9014354d691c538661bf00bfdb44"
    result = run_prefetch(tmp_path, "paper", M3ED_TEXT_REVISION=revision)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"hfl/chinese-roberta-wwm-ext@{revision}" in result.stdout, "the plan shows the pinned revision"
    assert "'hfl/chinese-roberta-wwm-ext' is not available here" in result.stderr
    assert "To provide it" in result.stderr and "Traceback" not in result.stderr


def test_prefetch_builds_a_random_profile_where_a_run_finds_it(tmp_path):
    result = run_prefetch(tmp_path, "tiny")
    assert result.returncode == 0, result.stderr
    for what in ("text", "audio"):
        assert (tmp_path / "m3ed" / "tiny" / what / "config.json").is_file()


def test_prefetch_rejects_an_unknown_asd_model(tmp_path):
    result = run_prefetch(tmp_path, "paper", "--asd-models", "talknet,nope")
    assert result.returncode == 2 and "nope" in result.stderr


def test_the_images_revisions_reach_a_run(monkeypatch):
    """What the image prefetched (M3ED_*_REVISION) is what a run's profile loads, so it is found offline."""
    from m3ed.profiles import get_profile

    monkeypatch.setenv("M3ED_TEXT_REVISION", "a" * 40)
    monkeypatch.setenv("M3ED_AUDIO_REVISION", "b" * 40)
    paper = get_profile("paper")
    assert (paper.text_revision, paper.audio_revision) == ("a" * 40, "b" * 40)
    assert get_profile("tiny").text_revision is None, "random profiles are built locally: no revision"
    monkeypatch.delenv("M3ED_TEXT_REVISION")
    assert get_profile("paper").text_revision is None
