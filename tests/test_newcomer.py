"""A newcomer's first ten minutes, as the README Quickstart tells them: no weights, one command, then MCP."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.server_fixtures import REPO
from tests.test_cli_errors import cli, cli_env


@pytest.mark.slow
def test_demo_then_generate_then_the_mcp_client(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    env = cli_env()
    done = cli("demo", "--dir", str(folder), env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    registry = folder / "registry.toml"
    saved = Path(done.stdout.split("saved ", 1)[1].split(" (id", 1)[0])
    assert registry.is_file() and saved.is_file() and saved.is_relative_to(folder)
    assert f"ZIMAGE_MCP_REGISTRY={registry}" in done.stderr  # the env line to use next
    assert "`zimage-mcp " not in done.stderr

    env_next = cli_env(ZIMAGE_MCP_REGISTRY=str(registry), ZIMAGE_MCP_OUTPUT_DIR=str(folder / "images"))
    again = cli("generate", "--prompt", "a cat", env=env_next)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "a cat" in cli("gallery", env=env_next).stdout

    client = subprocess.run(
        [
            sys.executable,
            str(REPO / "examples" / "client_call.py"),
            "--registry",
            str(registry),
            "--out-dir",
            str(tmp_path / "mcp-out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=cli_env(),
        cwd=tmp_path,
    )  # no hand edits: defaults come from the tiny registry
    assert client.returncode == 0, client.stderr[-3000:]
    lines = client.stdout.splitlines()
    generated = next(line for line in lines if line.startswith("generated")).split()[1]
    assert any(line.startswith("edited") and f"from parent {generated} mode img2img" in line for line in lines)


def test_make_tiny_can_write_its_registry(tmp_path: Path) -> None:
    done = cli("make-tiny", str(tmp_path / "t"), "--write-registry", timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"export ZIMAGE_MCP_REGISTRY={tmp_path / 't' / 'registry.toml'}"
    assert (tmp_path / "t" / "model" / "model_index.json").is_file()
