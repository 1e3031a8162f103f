"""The architecture, enforced: an import allow-list read from the AST, no import circles, small modules.

Each package may import only what its row allows, ours and third-party alike (the standard library
is always allowed). ARCHITECTURE.md draws the same arrows. Every import counts: one inside a function
(a lazy import is still an arrow) and one under ``if TYPE_CHECKING:`` (two modules that name each
other's types are a circle even if Python never runs it).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "zimage_mcp"
BUILTINS = ROOT / "plugins" / "zimage_builtins"
TORCH_FREE_THIRD_PARTY = {"pluggy", "platformdirs", "PIL"}
SERVER_THIRD_PARTY = TORCH_FREE_THIRD_PARTY | {
    "mcp",
    "mcp_types",
    "pydantic",
    "anyio",
    "starlette",
    "uvicorn",
    "httpx",
    "httpx2",
    "sse_starlette",
}
ENGINE_THIRD_PARTY = {"torch", "triton", "safetensors", "transformers", "tokenizers", "numpy", "PIL", "cv2"}


@dataclass(frozen=True)
class Rule:
    """What the modules under ``folder`` may import: our modules by prefix, third-party by top-level name."""

    folder: Path
    ours: tuple[str, ...]
    third_party: frozenset[str]


RULES = (
    Rule(PACKAGE / "engine", ("zimage_mcp.engine",), frozenset(ENGINE_THIRD_PARTY)),
    Rule(PACKAGE / "contract", ("zimage_mcp.contract",), frozenset({"PIL"})),
    Rule(
        PACKAGE / "registry",
        ("zimage_mcp.contract", "zimage_mcp.registry", "zimage_mcp"),
        frozenset(TORCH_FREE_THIRD_PARTY),
    ),
    Rule(PACKAGE / "store", ("zimage_mcp.contract", "zimage_mcp.store"), frozenset({"PIL", "isal"})),
    Rule(
        PACKAGE / "server",
        ("zimage_mcp.contract", "zimage_mcp.registry", "zimage_mcp.store", "zimage_mcp.server", "zimage_mcp"),
        frozenset(SERVER_THIRD_PARTY),
    ),
    Rule(  # the Ray Serve scale-out: imported only under `serve --ray`; torch lives in its replicas' registries
        PACKAGE / "scale",
        ("zimage_mcp.contract", "zimage_mcp.registry", "zimage_mcp.scale"),
        frozenset(TORCH_FREE_THIRD_PARTY | {"ray"}),
    ),
    Rule(
        BUILTINS,
        ("zimage_mcp.contract", "zimage_mcp.registry.hookspecs", "zimage_mcp.engine", "zimage_builtins", "zimage_mcp"),
        frozenset(ENGINE_THIRD_PARTY | TORCH_FREE_THIRD_PARTY),
    ),
)
# The package root: __init__ (the lazy hookimpl export), __main__ and cli, which may use anything.
ROOT_MODULES = {"__init__.py", "__main__.py", "cli.py"}
MAX_ROOT_EXTRA = 3
MAX_ENGINE_ROOT = 12
MAX_LINES = 400


def _modules() -> list[Path]:
    return sorted([*PACKAGE.rglob("*.py"), *BUILTINS.rglob("*.py")])


def _name(path: Path) -> str:
    rel = path.relative_to(BUILTINS.parent if path.is_relative_to(BUILTINS) else ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """Absolute names imported by a module, anywhere in it."""
    module = _name(path)
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join([*base, node.module] if node.module else base)
            else:
                prefix = node.module or ""
            found.add(prefix)
            found.update(f"{prefix}.{alias.name}" for alias in node.names if alias.name != "*")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def _ours(name: str) -> bool:
    return name.split(".")[0] in ("zimage_mcp", "zimage_builtins")


def _module_exists(name: str) -> bool:
    base = (BUILTINS.parent if name.startswith("zimage_builtins") else ROOT).joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _allowed_ours(name: str, ours: tuple[str, ...]) -> bool:
    """``"zimage_mcp"`` in a rule allows the package root's own names (``__version__``, ``hookimpl``), no subpackage."""
    for prefix in ours:
        if prefix == "zimage_mcp":
            if name == prefix or (name.count(".") == 1 and not _module_exists(name)):
                return True
        elif name == prefix or name.startswith(prefix + "."):
            return True
    return False


def _rule_for(path: Path) -> Rule | None:
    return next((rule for rule in RULES if path.is_relative_to(rule.folder)), None)


def test_every_module_belongs_to_a_package_with_a_rule() -> None:
    loose = [p.name for p in PACKAGE.glob("*.py") if p.name not in ROOT_MODULES]
    assert len(loose) <= MAX_ROOT_EXTRA, f"the package root holds more than {MAX_ROOT_EXTRA} extra modules: {loose}"
    for path in _modules():
        if path.parent == PACKAGE or path.is_relative_to(PACKAGE / "cli"):  # the cli package may use anything
            continue
        assert _rule_for(path) is not None, f"{path.relative_to(ROOT)} is in no package of the allow-list"


@pytest.mark.parametrize("rule", RULES, ids=lambda r: str(r.folder.relative_to(ROOT)))
def test_imports_follow_the_allow_list(rule: Rule) -> None:
    offenders = []
    for path in sorted(rule.folder.rglob("*.py")):
        for name in imports(path):
            top = name.split(".")[0]
            if _ours(name):
                allowed = _allowed_ours(name, rule.ours)
            else:
                allowed = top in sys.stdlib_module_names or top == "__future__" or top in rule.third_party
            if not allowed:
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_no_import_circles() -> None:
    graph: dict[str, set[str]] = {}
    for path in _modules():
        graph[_name(path)] = set()
    for path in _modules():
        for name in imports(path):
            # "from a.b import c": c may be a module or a name in a.b; take the longest that is a module.
            while name and name not in graph:
                name = name.rpartition(".")[0]
            if name and name != _name(path):
                graph[_name(path)].add(name)

    # A package's own __init__ re-exporting its submodules is not a circle through them.
    def edges(module: str) -> set[str]:
        return {m for m in graph[module] if not module.startswith(m + ".") and not m.startswith(module + ".")}

    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def walk(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for nxt in sorted(edges(module)):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                walk(nxt)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_engine_reads_no_environment_variable() -> None:
    """Callers pass paths and options; only the bridge may look at the environment (for torch's own caches)."""
    offenders = []
    for path in sorted((PACKAGE / "engine").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "putenv", "unsetenv"):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} os.{node.attr}")
    assert not offenders, offenders


def test_modules_stay_short() -> None:
    long = {str(p.relative_to(ROOT)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
    engine_root = [p.name for p in (PACKAGE / "engine").glob("*.py")]
    assert len(engine_root) <= MAX_ENGINE_ROOT, f"engine root holds {len(engine_root)} modules: {sorted(engine_root)}"


CHECK = """
import sys
import {module}
bad = sorted(m for m in sys.modules if m.split('.')[0] in {{{forbidden}}} or m.startswith('zimage_mcp.engine'))
assert not bad, bad
"""


@pytest.mark.parametrize(
    "module",
    [
        "zimage_mcp.server",
        "zimage_mcp.registry",
        "zimage_mcp.store",
        "zimage_mcp.contract",
        "zimage_mcp.cli",
        "zimage_builtins.engine_variants",
        "zimage_builtins.lora_dir",
    ],
)
def test_the_torch_free_side_leaves_torch_out(module: str) -> None:
    """Indirect imports too: what a module pulls in at import time, in a fresh interpreter."""
    code = CHECK.format(module=module, forbidden="'torch', 'safetensors', 'transformers'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_importing_the_engine_is_cheap() -> None:
    code = (
        "import sys, zimage_mcp.engine\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('transformers', 'mcp', 'pluggy', 'diffusers'))\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_building_the_server_and_listing_models_leaves_torch_out(tmp_path: Path) -> None:
    # prepare_at_start off: with it on, the engine plugin imports torch in the background by design
    (tmp_path / "registry.toml").write_text("[runtime]\nprepare_at_start = false\n")
    code = (
        "import sys, pathlib, anyio\n"
        "from mcp import Client\n"
        "from zimage_mcp.registry.settings import Settings\n"
        "from zimage_mcp.server import build_server\n"
        f"s = Settings.from_env(environ={{'ZIMAGE_MCP_REGISTRY': {str(tmp_path / 'registry.toml')!r}}},"
        f" output_dir=pathlib.Path({str(tmp_path)!r}))\n"
        "assert not s.prepare_at_start\n"
        "async def main():\n"
        "    async with Client(build_server(s)) as c:\n"
        "        r = await c.call_tool('list_models', {})\n"
        "        assert not r.is_error\n"
        "anyio.run(main)\n"
        "assert 'torch' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
