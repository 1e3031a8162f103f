"""The console script as people run it (subprocesses): errors in a line or two, global options anywhere,
generate with the tool's options, gallery, quiet pipes, the serve ready line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.server_fixtures import (  # noqa: F401,E501
    REPO,
    free_port,
    make_settings,
    start_http_server,
    stop,
    tiny_model_dir,
    write_registry,
)


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZIMAGE_MCP_")}
    env.update(ZIMAGE_MCP_DEVICE="cpu", PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "plugins")]), **extra)
    return env


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zimage_mcp", *args],
        capture_output=True,
        text=True,
        env=env or cli_env(),
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def assert_short_error(done: subprocess.CompletedProcess[str], *needles: str, max_lines: int = 2) -> None:
    assert done.returncode != 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    error = done.stderr[done.stderr.index("zimage-mcp:") :].strip().splitlines()
    assert 1 <= len(error) <= max_lines, done.stderr
    for needle in needles:
        assert needle in done.stderr, done.stderr


def test_missing_registry_is_one_or_two_lines_in_either_position() -> None:
    for done in (
        cli("list", env=cli_env(ZIMAGE_MCP_REGISTRY="/nope.toml")),
        cli("--registry", "/nope.toml", "list"),
        cli("list", "--registry", "/nope.toml"),
    ):
        assert_short_error(done, "/nope.toml", "does not exist", "--registry")
        assert "`zimage-mcp " not in done.stderr and "huggingface-cli" not in done.stderr  # hints that run
    debug = cli("list", "--registry", "/nope.toml", "--log-level", "DEBUG")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_attach_to_a_daemon_that_is_down() -> None:
    url = f"http://127.0.0.1:{free_port()}/mcp"
    done = cli("serve", "--attach", url, timeout=60)
    assert_short_error(done, f"no zimage-mcp daemon at {url}", "serve --transport http")
    assert done.stdout == ""


@pytest.mark.slow
def test_attach_with_a_wrong_token(tmp_path: Path, tiny_model_dir: Path) -> None:  # noqa: F811
    inputs = tmp_path / "in"
    inputs.mkdir()
    settings = make_settings(tmp_path, write_registry(tmp_path / "registry.toml", tiny_model_dir), inputs)
    port = free_port()
    proc = start_http_server(settings, port, ZIMAGE_MCP_TOKEN="right-token")
    try:
        done = cli(
            "serve", "--attach", f"http://127.0.0.1:{port}/mcp", env=cli_env(ZIMAGE_MCP_TOKEN="wrong"), timeout=60
        )
    finally:
        stop(proc)
    assert_short_error(done, "the daemon refused the token: set ZIMAGE_MCP_TOKEN")


def test_a_corrupt_checkpoint_is_two_lines(tmp_path: Path, tiny_model_dir: Path) -> None:  # noqa: F811
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    shard = next((model / "transformer").glob("*00001-of-*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:1000])
    registry = write_registry(tmp_path / "registry.toml", model)
    done = cli("generate", "--prompt", "x", "--registry", str(registry), "--out-dir", str(tmp_path / "out"))
    assert_short_error(done, "truncated or corrupt", "hf download")
    assert "huggingface-cli" not in done.stderr


@pytest.fixture
def tiny_env(tmp_path: Path, tiny_model_dir: Path) -> dict[str, str]:  # noqa: F811
    registry = write_registry(tmp_path / "registry.toml", tiny_model_dir)
    return cli_env(ZIMAGE_MCP_REGISTRY=str(registry), ZIMAGE_MCP_OUTPUT_DIR=str(tmp_path / "out"))


@pytest.mark.slow
def test_generate_takes_the_tools_options_and_gallery_lists_newest_first(
    tmp_path: Path, tiny_env: dict[str, str]
) -> None:
    done = cli(
        "generate",
        "--prompt",
        "a lighthouse",
        "--negative-prompt",
        "fog",
        "--count",
        "2",
        "--format",
        "webp",
        "--seed",
        "5",
        "--steps",
        "2",
        "--guidance",
        "0",
        "--out",
        str(tmp_path / "x.webp"),
        "--log-level",
        "WARNING",
        env=tiny_env,
    )
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert [i["seed"] for i in info["images"]] == [5, 6]
    assert [Path(i["path"]).name for i in info["images"]] == ["x-1.webp", "x-2.webp"]
    sidecar = json.loads((tmp_path / "out" / "images" / f"{info['images'][1]['id']}.json").read_text())
    assert sidecar["negative_prompt"] == "fog" and sidecar["format"] == "webp" and sidecar["count"] == 2
    assert "step" in done.stderr and "\r" not in done.stderr  # not a TTY: one line per phase
    refused = cli("generate", "--prompt", "x", "--lora", "nosuch:0.5", env=tiny_env)
    assert_short_error(refused, "nosuch")
    bad_size = cli("generate", "--prompt", "x", "--width", "65", env=tiny_env)
    assert_short_error(bad_size, "width")

    listed = cli("gallery", "--limit", "1", env=tiny_env)
    assert listed.returncode == 0, listed.stderr
    rows = listed.stdout.strip().splitlines()
    assert len(rows) == 1 and rows[0].startswith(info["images"][1]["id"]) and "a lighthouse" in rows[0]
    as_json = json.loads(cli("gallery", "--json", env=tiny_env).stdout)
    assert [r["id"] for r in as_json] == [info["images"][1]["id"], info["images"][0]["id"]]
    assert as_json[0]["model"] == "z-image-turbo" and as_json[0]["width"] == 256


@pytest.mark.parametrize("command", ["list", "gallery", "plugins"])
def test_piping_into_head_exits_quietly(command: str, tiny_env: dict[str, str]) -> None:
    script = f'"{sys.executable}" -m zimage_mcp {command} | head -c0; exit ${{PIPESTATUS[0]}}'
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=tiny_env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr


def test_serve_says_ready_on_stderr_never_stdout(tiny_env: dict[str, str]) -> None:
    done = cli("serve", env=tiny_env, timeout=120)  # stdin is empty: it starts, says ready, sees EOF, stops
    assert done.stdout == ""
    ready = [line for line in done.stderr.splitlines() if line.startswith("zimage-mcp ready")]
    assert len(ready) == 1 and "stdio" in ready[0] and tiny_env["ZIMAGE_MCP_OUTPUT_DIR"] in ready[0]
    assert "z-image-turbo" in ready[0]


def test_the_http_daemon_says_ready_with_its_address(tiny_env: dict[str, str]) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "zimage_mcp", "serve", "--transport", "http", "--port", str(port)],
        env=tiny_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        ready = ""
        for line in proc.stderr:  # bounded by the daemon's own start; a hang fails the suite's time-out
            if line.startswith("zimage-mcp ready"):
                ready = line
                break
        assert f"http http://127.0.0.1:{port}/mcp" in ready and tiny_env["ZIMAGE_MCP_OUTPUT_DIR"] in ready, ready
        assert "z-image-turbo" in ready
    finally:
        proc.kill()
        out, _ = proc.communicate(timeout=30)
    assert out == ""  # the HTTP daemon prints nothing on stdout either


def test_list_and_plugins_show_failed_plugins_with_their_reason(tmp_path: Path, tiny_env: dict[str, str]) -> None:
    site = tmp_path / "site"
    info = site / "broken_zimage_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-zimage-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[zimage_mcp]\nbroken_plugin = broken_zimage_mod\n")
    (site / "broken_zimage_mod.py").write_text("raise ImportError('needs libfoo, which is not installed')\n")
    env = {**tiny_env, "PYTHONPATH": os.pathsep.join([str(site), tiny_env["PYTHONPATH"]])}
    for command in ("plugins", "list"):
        done = cli(command, env=env)
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
        problems = done.stdout[done.stdout.index("problems:") :]
        assert "broken_plugin" in problems and "needs libfoo" in problems, done.stdout
    rows = json.loads(cli("plugins", "--json", env=env).stdout)
    assert any(r["name"] == "broken_plugin" and r["status"] == "failed" for r in rows)
