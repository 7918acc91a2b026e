"""The sample's feature files stay the same bytes across refactors.

``tests/data/sample_digest.json`` was recorded before the configuration refactor (issue: argparse out of
the library). A structural change must not change a single feature value or attribute; a change that
is meant to alter the output records a new digest (``python tests/test_sample_digest.py --record``)
and says why in its commit.

Float results depend on the CPU's vector unit and the torch build, so the digest is compared where it
was recorded: the same torch version and CPU capability (``torch.backends.cpu.get_cpu_capability``).
"""
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DIGEST = REPO / "tests" / "data" / "sample_digest.json"
STAGES = "text,audio,asd,visual"

pytestmark = pytest.mark.slow


def platform() -> dict:
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def extract(out: Path, cache: Path) -> None:
    """The sample, every feature stage, tiny models and the shipped Light-ASD weights, one thread."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "M3ED_CACHE": str(cache), "PYTHONPATH": str(REPO),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "m3ed.pipelines.cli_extract", "--out", str(out), "--stages", STAGES,
           "--profile", "tiny", "--device", "cpu", "--asd-model", "light-asd", "--threads", "1",
           "--no-progress", "--no-report"]
    subprocess.run(cmd, env=env, check=True, cwd=REPO, capture_output=True)


def _attr(value, roots: dict[str, str]):
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, str):
        for placeholder, root in roots.items():   # temporary folders differ from run to run
            value = value.replace(root, placeholder)
    return value


def digests(out: Path, cache: Path) -> dict[str, dict[str, str]]:
    """Feature set -> {"data": digest of every dataset's name, dtype, shape and bytes,
    "attrs": digest of the file's attributes but config_hash, with the temporary folders' names
    taken out}."""
    roots = {"{OUT}": str(out.resolve()), "{CACHE}": str(cache.resolve())}
    result = {}
    for path in sorted((out / "features").glob("*.h5")):
        data, attrs = hashlib.sha256(), hashlib.sha256()
        with h5py.File(path, "r") as h5:
            def visit(name, node):
                if isinstance(node, h5py.Dataset):
                    array = node[()]
                    data.update(f"{name}|{array.dtype}|{array.shape}|".encode())
                    data.update(np.ascontiguousarray(array).tobytes())
            h5.visititems(visit)
            # config_hash digests paths (the models' temporary cache); the provenance it digests is
            # compared value by value instead, since it is stored beside it.
            values = {k: _attr(v, roots) for k, v in sorted(h5.attrs.items()) if k != "config_hash"}
        attrs.update(json.dumps(values, sort_keys=True, default=str).encode())
        result[path.stem] = {"data": data.hexdigest()[:20], "attrs": attrs.hexdigest()[:20]}
    return result


def sample_digests() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out, cache = Path(tmp) / "out", Path(tmp) / "cache"
        extract(out, cache)
        return digests(out, cache)


def test_sample_features_are_the_recorded_bytes():
    recorded = json.loads(DIGEST.read_text())
    if recorded["platform"] != platform():
        pytest.skip(f"digest recorded on {recorded['platform']}; this machine is {platform()}")
    assert sample_digests() == recorded["features"]


if __name__ == "__main__" and "--record" in sys.argv:
    DIGEST.write_text(json.dumps({"platform": platform(), "features": sample_digests()}, indent=1) + "\n")
    print(DIGEST.read_text())
