"""The C heap's policy around one model call (m3ed.device.freed_buffers_kept), checked by counting page faults."""
import resource

import pytest
import torch

from m3ed import device
from m3ed.device import freed_buffers_kept

pytestmark = pytest.mark.skipif(device._MALLOPT is None, reason="glibc only")

MB = 2 ** 20


def _faults_of_second_buffer(size: int) -> int:
    """Page faults of writing a buffer of ``size`` bytes after one of that size was written and freed."""
    first = torch.ones(size // 4)
    del first
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    second = torch.ones(size // 4)   # writes every page
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del second
    return faults


def test_freed_buffers_are_reused_inside_the_block_and_handed_back_after():
    size = 200 * MB
    pages = size // resource.getpagesize()
    # glibc's default: a freed 200 MB buffer is unmapped, so the next one faults in every page
    assert _faults_of_second_buffer(size) > pages // 2
    with freed_buffers_kept():
        kept = _faults_of_second_buffer(size)
    assert kept < pages // 20   # the same memory again, already mapped
    assert _faults_of_second_buffer(size) > pages // 2   # glibc's limits are back afterwards
