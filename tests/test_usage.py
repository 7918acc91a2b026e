"""m3ed.usage: the CPU time a stage used, its own and its children's, and the cores it kept busy."""
import subprocess
import sys
import time

import pytest

from m3ed.usage import Usage


def test_usage_counts_this_process_and_the_children_it_waited_for():
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass"
    with Usage("cpu") as usage:
        subprocess.run([sys.executable, "-c", burn], check=True)   # 0.6 s of CPU in a child
        started = time.process_time()
        while time.process_time() - started < 0.3:                  # and 0.3 s here
            pass
    record = usage.record()
    assert record["cpu_s"] >= 0.85
    assert record["cores_busy"] == pytest.approx(record["cpu_s"] / usage.wall, abs=0.01)
    assert "gpu_busy_pct" not in record and "gpu_peak_memory_mb" not in record   # no GPU: no GPU figures


def test_an_idle_block_keeps_no_core_busy():
    with Usage("cpu") as usage:
        time.sleep(0.5)
    assert usage.record()["cores_busy"] < 0.2
