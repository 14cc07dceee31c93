"""benchmark.malloc: the settings are accepted where glibc runs, and nothing happens (False)
where there is no mallopt. Their effect (fewer page faults, the same numbers) is measured by the
benchmarks in docs/stability.md §14, not here: glibc's own dynamic threshold already spares a
loop of one tensor size, so a small test loop cannot show it reliably."""
import platform

import pytest

from benchmark import malloc


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibc_accepts_both_settings():
    assert malloc.keep_freed_memory() is True


def test_no_mallopt_means_no_change(monkeypatch):
    monkeypatch.setattr(malloc.ctypes.util, "find_library", lambda name: "no-such-libc.so.0")
    assert malloc.keep_freed_memory() is False
