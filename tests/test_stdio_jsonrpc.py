# ruff: noqa: F811
"""stdio answers malformed JSON-RPC lines (-32700 / -32600) and keeps serving (a real subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys

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
