"""stdio mode: stdout carries nothing but JSON-RPC, even with a plugin that prints everywhere.

The CHATTY plugin is installed the way real plugins are (an entry point in a ``*.dist-info`` on
PYTHONPATH). It prints, writes to ``sys.stdout``, writes straight to fd 1 and logs: at import, in its
hook and inside its backend factory (which runs during a tool call). Logs must reach stderr with the
request id of the tool call.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.server_fixtures import REPO, input_dir, registry_file, server_env, settings, tiny_model_dir  # noqa: F401
from zimage_mcp.registry.settings import Settings

pytestmark = pytest.mark.slow

CHATTY = textwrap.dedent("""
    import logging, os, sys
    from dataclasses import replace
    from zimage_mcp import hookimpl

    log = logging.getLogger("chatty")
    print("CHATTY print at import")
    sys.stdout.write("CHATTY sys.stdout at import\\n"); sys.stdout.flush()
    os.write(1, b"CHATTY fd1 at import\\n")
    log.warning("CHATTY log at import")

    def factory(spec, ctx):
        print("CHATTY print in factory", flush=True)
        os.write(1, b"CHATTY fd1 in factory\\n")
        log.warning("CHATTY log in factory")
        from zimage_builtins.engine_backend import build_backend
        return build_backend(spec, ctx)

    @hookimpl
    def zimage_register_variants(register, catalog):
        print("CHATTY print in hook", flush=True)
        log.warning("CHATTY log in hook")
        for item in catalog.variants_for("zimage_engine"):
            register(replace(item.spec, id="chatty-turbo", title="chatty"), factory, aliases=())
""")


def _install_chatty(root: Path) -> Path:
    site = root / "site"
    dist = site / "chatty_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (site / "chatty_plugin.py").write_text(CHATTY)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: chatty-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[zimage_mcp]\nchatty = chatty_plugin\n")
    return site


def _send(proc: subprocess.Popen[bytes], message: dict[str, object]) -> None:
    assert proc.stdin is not None
    proc.stdin.write((json.dumps(message) + "\n").encode())
    proc.stdin.flush()


def test_stdout_is_protocol_only_with_a_chatty_plugin(settings: Settings, tmp_path: Path) -> None:
    site = _install_chatty(tmp_path)
    env = server_env(settings, ZIMAGE_MCP_LOG_LEVEL="INFO")
    env["PYTHONPATH"] = os.pathsep.join([str(site), env["PYTHONPATH"]])
    proc = subprocess.Popen(
        [sys.executable, "-m", "zimage_mcp", "serve"],
        env=env,
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _send(
            proc,
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "t", "version": "0"},
                },
            },
        )
        _send(proc, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        _send(
            proc,
            {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {
                    "name": "generate_image",
                    "arguments": {
                        "prompt": "a tree",
                        "model": "chatty-turbo",
                        "width": 256,
                        "height": 256,
                        "steps": 2,
                        "preview": "none",
                    },
                },
            },
        )
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = proc.stdout.readline().decode()
            if not line:
                break
            lines.append(line)
            if json.loads(line).get("id") == 2:
                break
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    rest = proc.stdout.read().decode() if proc.stdout else ""
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    stdout_lines = [ln for ln in (lines + rest.splitlines()) if ln.strip()]
    assert stdout_lines, stderr[-3000:]
    for line in stdout_lines:
        assert json.loads(line)["jsonrpc"] == "2.0", line  # nothing but protocol
    assert "CHATTY" not in "".join(stdout_lines)
    answer = next(json.loads(ln) for ln in stdout_lines if json.loads(ln).get("id") == 2)
    assert not answer["result"].get("isError"), answer
    for where in (
        "print at import",
        "sys.stdout at import",
        "fd1 at import",
        "log at import",
        "print in hook",
        "log in hook",
        "print in factory",
        "fd1 in factory",
        "log in factory",
    ):
        assert f"CHATTY {where}" in stderr, (where, stderr[-3000:])
    factory_log = next(ln for ln in stderr.splitlines() if "CHATTY log in factory" in ln)
    assert "[req 2]" in factory_log  # the log line carries the MCP request id of the tool call
    assert "[req 2]" in stderr and "generate_image job" in stderr
