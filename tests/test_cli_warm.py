"""``zimage-mcp warm``: loads, compiles (where optimize is on) and generates once per size; CPU, tiny model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.server_fixtures import tiny_model_dir  # noqa: F401


def _run(tmp_path: Path, registry: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "ZIMAGE_MCP_REGISTRY": str(registry),
        "ZIMAGE_MCP_DEVICE": "cpu",
        "ZIMAGE_MCP_OUTPUT_DIR": str(tmp_path / "out"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    cmd = [sys.executable, "-m", "zimage_mcp", "warm", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_warm_prints_a_line_per_unit_and_exits_0(tmp_path: Path, tiny_model_dir: Path) -> None:  # noqa: F811
    reg = tmp_path / "registry.toml"
    reg.write_text(
        f'[variants.z-image-turbo.weights]\npath = "{tiny_model_dir.as_posix()}"\n'
        "[variants.z-image-turbo.defaults]\nwidth = 256\nheight = 256\nsteps = 2\n"
        "[variants.z-image-turbo.limits]\nmin_side = 256\nmax_side = 512\n"
    )
    done = _run(tmp_path, reg, "turbo", "--sizes", "256x384")
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("warm ")]
    assert lines[0].startswith("warm z-image-turbo: loaded in")
    assert any("256x256 generation" in line for line in lines) and any("256x384 generation" in line for line in lines)
    assert lines[-1].startswith("warm done in") and done.stdout == ""
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing saved
    caches = list((tmp_path / "cache" / "zimage-mcp" / "torch-compile").iterdir())
    assert len(caches) == 1 and caches[0].name.endswith("-cpu")  # the per-user cache, keyed


def test_warm_refuses_a_bad_size(tmp_path: Path, tiny_model_dir: Path) -> None:  # noqa: F811
    reg = tmp_path / "registry.toml"
    reg.write_text(f'[variants.z-image-turbo.weights]\npath = "{tiny_model_dir.as_posix()}"\n')
    done = _run(tmp_path, reg, "--sizes", "big")
    assert done.returncode == 2 and "--sizes" in done.stderr and "WIDTHxHEIGHT" in done.stderr
