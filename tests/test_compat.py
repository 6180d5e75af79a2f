"""ddcore.compat: the process-level fixes every entry point gets by importing ddcore."""

import subprocess
import sys

import pytest

FAULTS = """
import resource, torch
import ddcore.compat
ddcore.compat.keep_freed_memory(enabled=False)  # DD_KEEP_FREED_MEMORY decides
for _ in range(20):  # warm up (64 MiB blocks): the heap settles around the Python objects
    torch.empty(16 << 20).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.empty(16 << 20).fill_(1.0)  # freed after each line, as a batch's activations are
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(keep: str, script: str = FAULTS) -> int:
    env = {"OMP_NUM_THREADS": "1", "PATH": ""} | ({"DD_KEEP_FREED_MEMORY": keep} if keep else {})
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.split()[-1])


def test_freed_tensors_memory_is_reused_without_page_faults():
    """glibc unmaps a freed 64 MiB block and the next one faults every page in again
    (10 x 16,384 pages); with keep_freed_memory the heap keeps and reuses most of it."""
    from ddcore.compat import keep_freed_memory

    if not keep_freed_memory():
        pytest.skip("not glibc: no mallopt")
    default, kept = faults("0"), faults("1")
    assert default > 100_000 and kept * 5 < default, (default, kept)


def test_importing_the_framework_leaves_the_allocator_alone():
    """Keeping freed memory holds a process's peak heap: at ImageNet scale that is the peak of
    reading a set back. Importing ddcore (and the app) changes nothing process-wide; the CPU
    trainer turns it on (``allocator.keep_freed: auto``)."""
    from ddapp.jobs import keeps_freed_memory
    from ddcore.compat import keep_freed_memory

    if not keep_freed_memory():
        pytest.skip("not glibc: no mallopt")
    imported = FAULTS.replace("ddcore.compat.keep_freed_memory(enabled=False)", "import ddapp.tasks")
    assert faults("", imported) > 5 * faults("1")
    assert keeps_freed_memory({"allocator": {"keep_freed": "auto"}, "trainer": {"accelerator": "cpu"}})
    assert not keeps_freed_memory({"allocator": {"keep_freed": "auto"}, "trainer": {"accelerator": "gpu"}})
    assert not keeps_freed_memory({"allocator": {"keep_freed": False}, "trainer": {"accelerator": "cpu"}})
