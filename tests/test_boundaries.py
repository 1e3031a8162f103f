"""The server side never imports torch or the engine, directly or indirectly."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = """
import sys
import {module}
bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'zimage_mcp.engine', 'safetensors', 'transformers')))
assert not bad, bad
"""


@pytest.mark.parametrize(
    "module",
    ["zimage_mcp.server", "zimage_mcp.cli", "zimage_mcp.http_app", "zimage_mcp.attach", "zimage_mcp.jobs"],
)
def test_server_modules_leave_torch_out(module: str) -> None:
    proc = subprocess.run([sys.executable, "-c", CHECK.format(module=module)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_building_the_server_and_listing_models_leaves_torch_out(tmp_path: object) -> None:
    code = (
        "import sys, pathlib, anyio\n"
        "from mcp import Client\n"
        "from zimage_mcp.settings import Settings\n"
        "from zimage_mcp.server import build_server\n"
        f"s = Settings.from_env(environ={{}}, output_dir=pathlib.Path({str(tmp_path)!r}))\n"
        "async def main():\n"
        "    async with Client(build_server(s)) as c:\n"
        "        r = await c.call_tool('list_models', {})\n"
        "        assert not r.is_error\n"
        "anyio.run(main)\n"
        "assert 'torch' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
