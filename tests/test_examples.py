"""The examples in examples/ run as documented, on the tiny model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.server_fixtures import REPO, make_settings, server_env, tiny_model_dir, write_registry  # noqa: F401


@pytest.mark.slow
def test_generate_turbo_example_writes_a_png(tmp_path: Path) -> None:
    out = tmp_path / "fox.png"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "examples" / "generate_turbo.py"),
            "--tiny",
            "--prompt",
            "a fox",
            "--steps",
            "2",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "step 2/2" in done.stdout


@pytest.mark.slow
def test_client_example_generates_then_edits_by_id(tmp_path: Path, tiny_model_dir: Path) -> None:  # noqa: F811
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    settings = make_settings(tmp_path, write_registry(tmp_path / "registry.toml", tiny_model_dir), inputs)
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / "client_call.py"), "--size", "256", "--steps", "2"],
        capture_output=True,
        text=True,
        timeout=300,
        env=server_env(settings),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    generated = next(line for line in lines if line.startswith("generated")).split()[1]
    assert any(line.startswith("edited") and f"from parent {generated} mode img2img" in line for line in lines)
