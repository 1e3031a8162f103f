"""The engine knows nothing of MCP, pluggy, the registry or the server, directly or indirectly."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[2] / "zimage_mcp" / "engine"
FORBIDDEN = ("mcp", "pluggy", "diffusers", "peft", "zimage_mcp.server", "zimage_mcp.registry", "zimage_mcp.plugins",
             "zimage_mcp.hookspecs", "zimage_mcp.catalog", "zimage_mcp.tools", "zimage_mcp.jobs")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_engine_module_imports_the_protocol_side() -> None:
    offenders = {
        f"{path.name}: {name}"
        for path in ENGINE.glob("*.py")
        for name in _imports(path)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)
    }
    assert not offenders, sorted(offenders)


def test_importing_the_whole_engine_loads_none_of_them() -> None:
    modules = [f"zimage_mcp.engine.{p.stem}" for p in ENGINE.glob("*.py") if p.stem != "__init__"]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in ('mcp', 'pluggy', 'diffusers', 'peft')"
        " or m in ('zimage_mcp.server', 'zimage_mcp.registry', 'zimage_mcp.plugins', 'zimage_mcp.hookspecs')]\n"
        "assert not bad, bad\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
