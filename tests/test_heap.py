"""``serve``'s malloc tuning (``cli/heap.py``): applied on glibc, and never over the user's own settings."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from zimage_mcp.cli.heap import USER_SETTINGS, keep_freed_memory

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt")
def test_applied_on_glibc_in_a_fresh_process() -> None:
    env = {k: v for k, v in os.environ.items() if k not in USER_SETTINGS}
    code = "from zimage_mcp.cli.heap import keep_freed_memory; print(keep_freed_memory())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


@pytest.mark.parametrize("name", USER_SETTINGS)
def test_the_users_heap_settings_win(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "glibc.malloc.trim_threshold=131072" if name == "GLIBC_TUNABLES" else "131072")
    assert keep_freed_memory() is False
