# ruff: noqa: F811
"""stdio answers malformed JSON-RPC lines (-32700 / -32600) and keeps serving (a real subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import pytest

from tests.server_fixtures import REPO, input_dir, registry_file, server_env, settings, tiny_model_dir  # noqa: F401
from zimage_mcp.registry.settings import Settings

pytestmark = pytest.mark.slow
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
}


def test_malformed_lines_are_answered_and_the_server_keeps_serving(settings: Settings) -> None:
    lines = [
        json.dumps(INIT),
        json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        '{"jsonrpc": "2.0", "id": 2, "method": ',  # broken JSON
        "\xff\xfe not utf-8",
        json.dumps({"jsonrpc": "1.0", "id": 3, "method": "tools/list"}),
        json.dumps({"jsonrpc": "2.0", "id": 4}),
        json.dumps([{"jsonrpc": "2.0", "id": 5, "method": "tools/list"}]),
        json.dumps("just a string"),
        json.dumps({"jsonrpc": "2.0", "id": {"bad": 1}, "method": "tools/list"}),
        "",
        json.dumps({"jsonrpc": "2.0", "id": 6, "method": "tools/list"}),
    ]
    data = "\n".join(lines).encode("utf-8", "surrogateescape").replace("\xff\xfe".encode(), b"\xff\xfe") + b"\n"
    proc = subprocess.run(
        [sys.executable, "-m", "zimage_mcp", "serve"],
        input=data,
        env=server_env(settings),
        cwd=REPO,
        capture_output=True,
        timeout=90,
    )
    out = [json.loads(line) for line in proc.stdout.decode().splitlines() if line.strip()]
    assert out, proc.stderr.decode()[-2000:]
    by_id = {}
    errors = []
    for msg in out:
        assert msg["jsonrpc"] == "2.0"
        if "error" in msg:
            errors.append(msg)
        else:
            by_id[msg["id"]] = msg
    codes = [(e["id"], e["error"]["code"]) for e in errors]
    assert codes == [
        (None, -32700),
        (None, -32700),
        (3, -32600),
        (4, -32600),
        (None, -32600),
        (None, -32600),
        (None, -32600),
    ], codes
    assert 1 in by_id and 6 in by_id  # served before and after the bad lines
    assert "generate_image" in {t["name"] for t in by_id[6]["result"]["tools"]}


def _serve(settings: Settings, lines: list[dict[str, object]], stdin_file: Path | None = None) -> dict[object, dict]:
    """Send ``lines`` and close stdin at once (through a pipe, or from a regular file); the answers by id."""
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    if stdin_file is not None:
        stdin_file.write_bytes(data)
    with open(stdin_file, "rb") if stdin_file else nullcontext(None) as source:
        proc = subprocess.run(
            [sys.executable, "-m", "zimage_mcp", "serve"],
            input=None if source else data,
            stdin=source,
            env=server_env(settings),
            cwd=REPO,
            capture_output=True,
            timeout=120,
        )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert "Traceback" not in proc.stderr.decode(), proc.stderr.decode()[-2000:]
    return {msg.get("id"): msg for msg in map(json.loads, proc.stdout.decode().splitlines())}


def test_requests_in_flight_at_end_of_input_are_answered_before_the_server_exits(settings: Settings) -> None:
    """A client may close its side as soon as it has sent its last request: the generation still finishes."""
    call = {"name": "generate_image", "arguments": {"prompt": "a red cube", "width": 256, "height": 256, "seed": 3}}
    lines = [INIT, {"jsonrpc": "2.0", "method": "notifications/initialized"}]
    lines.append({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": call})
    answers = _serve(settings, lines)
    result = answers[7]["result"]
    assert not result.get("isError"), result
    assert Path(result["structuredContent"]["images"][0]["path"]).is_file()


def test_stdin_from_a_regular_file_is_served(settings: Settings, tmp_path: Path) -> None:
    """epoll cannot wait for a regular file: such a stdin is read on a worker thread instead."""
    lines = [INIT, {"jsonrpc": "2.0", "method": "notifications/initialized"}]
    lines.append({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
    answers = _serve(settings, lines, stdin_file=tmp_path / "requests.jsonl")
    assert "generate_image" in {t["name"] for t in answers[2]["result"]["tools"]}


@pytest.mark.parametrize("through", ["pipe", "file"])
def test_a_line_over_the_limit_is_refused_and_the_next_one_served(
    settings: Settings, tmp_path: Path, through: str
) -> None:
    from zimage_mcp.server.stdio_transport import LINE_LIMIT

    huge = {"jsonrpc": "2.0", "id": 3, "method": "tools/list", "params": {"_meta": {"pad": "x" * LINE_LIMIT}}}
    lines = [INIT, {"jsonrpc": "2.0", "method": "notifications/initialized"}, huge]
    lines.append({"jsonrpc": "2.0", "id": 4, "method": "tools/list"})
    answers = _serve(settings, lines, stdin_file=tmp_path / "requests.jsonl" if through == "file" else None)
    refused = answers[None]["error"]
    assert refused["code"] == -32600 and "longer than 64 MiB" in refused["message"]
    assert 3 not in answers and "generate_image" in {t["name"] for t in answers[4]["result"]["tools"]}


def test_a_request_cancelled_before_end_of_input_does_not_hold_the_server_open(settings: Settings) -> None:
    """The SDK never answers a cancelled request, so the end of input must not wait for its answer."""
    call = {"name": "generate_image", "arguments": {"prompt": "a red cube", "width": 256, "height": 256, "seed": 3}}
    lines = [INIT, {"jsonrpc": "2.0", "method": "notifications/initialized"}]
    lines.append({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": call})
    lines.append({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 7}})
    lines.append({"jsonrpc": "2.0", "id": 8, "method": "tools/list"})
    answers = _serve(settings, lines)  # returns once the server exited (a hang fails on the timeout)
    assert 7 not in answers  # cancelled: never answered, as the spec asks
    assert "generate_image" in {t["name"] for t in answers[8]["result"]["tools"]}
