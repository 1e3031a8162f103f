"""The console script: list, plugins, pull (offline), lora inspect, make-tiny, generate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.server_fixtures import input_dir, registry_file, settings, tiny_model_dir  # noqa: F401
from zimage_mcp.cli import main
from zimage_mcp.registry.settings import Settings


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> Settings:  # noqa: F811
    for key, value in {
        "ZIMAGE_MCP_REGISTRY": str(settings.registry_file),
        "ZIMAGE_MCP_OUTPUT_DIR": str(settings.output_dir),
        "ZIMAGE_MCP_LORA_DIR": str(settings.lora_dir),
        "ZIMAGE_MCP_DEVICE": "cpu",
    }.items():
        monkeypatch.setenv(key, value)
    return settings


def test_list_and_plugins(env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "* z-image-turbo" in out and "installed" in out and "missing" in out
    assert main(["plugins", "--json"]) == 0
    names = {row["name"] for row in json.loads(capsys.readouterr().out)}
    assert "zimage_engine" in names


def test_pull_offline_is_a_clear_message(
    env: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(env.output_dir / "hf"))
    assert main(["pull", "turbo"]) == 1
    err = capsys.readouterr().err
    assert "could not download Tongyi-MAI/Z-Image-Turbo" in err and "network" in err


def test_pull_names_come_from_the_catalogue(env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pull", "edit"]) == 2  # in the catalogue, but its weights are not published
    err = capsys.readouterr().err
    assert "no published weights for 'edit'" in err and "base, turbo, z-image-base, z-image-turbo" in err


def test_a_bad_runtime_value_is_one_line(env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert env.registry_file is not None
    with env.registry_file.open("a") as f:
        f.write("\n[runtime]\nmax_queue = 0\n")
    assert main(["list"]) == 2
    assert "[runtime] max_queue: must be an integer >= 1" in capsys.readouterr().err


def test_lora_inspect_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lora", "inspect", str(tmp_path / "nope.safetensors")]) == 1
    assert "LoRA file not found" in capsys.readouterr().err


def test_generate_direct(env: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "direct.png"
    code = main(
        [
            "generate",
            "--prompt",
            "a cup",
            "--width",
            "256",
            "--height",
            "256",
            "--steps",
            "2",
            "--seed",
            "3",
            "--out",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    info = json.loads(captured.out)
    assert info["seed"] == 3 and Path(info["path"]) == out.resolve() and out.read_bytes().startswith(b"\x89PNG")
    assert "loading" in captured.err and "step" in captured.err  # progress went to stderr, a line per phase


def test_generate_bad_size(env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "--prompt", "x", "--width", "65"]) == 1
    assert "width" in capsys.readouterr().err


def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere() -> None:
    import io

    from zimage_mcp.cli.generate import Progress

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        progress = Progress(stream)
        for i in range(1, 4):
            progress(i, 4, f"step {i}/3")
        progress(4, 4, "saving image 1/1")
        progress.end()
    assert "\r[" in tty.getvalue() and "#" in tty.getvalue()
    assert pipe.getvalue().splitlines() == ["step 1/3", "saving image 1/1"]
