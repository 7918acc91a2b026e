"""The C heap's policy around one model call (m3ed.device.freed_buffers_kept), checked by counting page faults."""
import json
import subprocess
import sys

import pytest

from m3ed import device

# In a fresh process, as a run is: glibc may move a thread of a long-lived, many-threaded process (such
# as the test session) to another of its arenas, whose heaps of at most 64 MB map larger buffers anyway.
# malloc itself, not torch: torch allocates with posix_memalign, which reuses a freed chunk less reliably.
SCRIPT = """
import ctypes, json, resource
from m3ed.device import freed_buffers_kept

libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]

def faults_of_second_buffer(size):
    for second in (False, True):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        buffer = libc.malloc(size)
        ctypes.memset(buffer, 1, size)   # writes every page
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        libc.free(buffer)
    return faults

size = 200 * 2 ** 20
default = faults_of_second_buffer(size)
with freed_buffers_kept():
    kept = faults_of_second_buffer(size)
after = faults_of_second_buffer(size)
print(json.dumps({"pages": size // resource.getpagesize(), "default": default, "kept": kept, "after": after}))
"""


@pytest.mark.skipif(device._MALLOPT is None, reason="glibc only")
def test_freed_buffers_are_reused_inside_the_block_and_handed_back_after():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True)
    faults = json.loads(result.stdout.strip().splitlines()[-1])
    pages = faults["pages"]
    # glibc's default: a freed 200 MB buffer is unmapped, so the next one faults in every page
    assert faults["default"] > pages // 2
    assert faults["kept"] < pages // 20   # the same memory again, already mapped
    assert faults["after"] > pages // 2   # glibc's limits are back afterwards
