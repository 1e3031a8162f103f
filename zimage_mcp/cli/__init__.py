"""``zimage-mcp``: serve over MCP (stdio, HTTP, or attached to a daemon) and a few direct commands.

stdout belongs to the protocol under ``serve``: logs go to stderr (or ``settings.log_file``). In stdio
mode the protocol is written to a private duplicate of fd 1 and, for the whole process lifetime, fd 1
and ``sys.stdout`` point at stderr, so a plugin's ``print()`` (at import, in a hook or in a factory)
can never reach the protocol stream.

Errors a user can fix (our error types, a bad path, a daemon that is down) are one or two lines on
stderr and a non-zero exit; ``--log-level DEBUG`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from zimage_mcp import __version__
from zimage_mcp.cli.commands import (
    cmd_demo,
    cmd_gallery,
    cmd_list,
    cmd_lora,
    cmd_make_tiny,
    cmd_plugins,
    cmd_pull,
    default_demo_dir,
)
from zimage_mcp.cli.common import LOG_FORMAT, CliError, command_name, protect_stdout, setup_logging
from zimage_mcp.cli.generate import add_arguments as add_generate_arguments
from zimage_mcp.cli.generate import cmd_generate
from zimage_mcp.cli.serve import cmd_serve
from zimage_mcp.cli.warm import add_arguments as add_warm_arguments
from zimage_mcp.cli.warm import cmd_warm

__all__ = ["LOG_FORMAT", "main", "protect_stdout", "setup_logging"]

GLOBAL_OPTIONS = (
    ("--registry", "user registry TOML (ZIMAGE_MCP_REGISTRY)"),
    ("--out-dir", "output folder (ZIMAGE_MCP_OUTPUT_DIR)"),
    ("--device", "auto, cpu, cuda, cuda:N, mps (ZIMAGE_MCP_DEVICE)"),
    ("--log-level", "DEBUG, INFO, WARNING (ZIMAGE_MCP_LOG_LEVEL); DEBUG also shows tracebacks"),
)


def _globals(default: Any) -> argparse.ArgumentParser:
    """The global options, accepted before or after the subcommand.

    Before it they default to None; after it to ``SUPPRESS``, so a subcommand that does not repeat an
    option keeps the value given before it, and both positions give the same result.
    """
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("global options")
    for flag, text in GLOBAL_OPTIONS:
        group.add_argument(flag, help=text, default=default)
    return parent


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zimage-mcp", description="Z-Image MCP server and tools", parents=[_globals(None)])
    p.add_argument("--version", action="version", version=__version__)
    common = [_globals(argparse.SUPPRESS)]
    sub = p.add_subparsers(dest="command")
    serve = sub.add_parser("serve", parents=common, help="run the MCP server (stdio by default)")
    serve.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--attach", metavar="URL", help="stdio front for a daemon: http://127.0.0.1:8765/mcp")
    serve.add_argument("--ray", nargs="?", const="", metavar="ADDRESS", help="generate on Ray Serve replicas (HTTP)")
    add_generate_arguments(sub.add_parser("generate", parents=common, help="generate images directly (no MCP)"))
    pull = sub.add_parser("pull", parents=common, help="download weights through huggingface_hub")
    pull.add_argument("variant", help="a variant id or alias whose weights are published (turbo, base, ...)")
    sub.add_parser("list", parents=common, help="variants with their installed status, and problems")
    plugins = sub.add_parser("plugins", parents=common, help="plugins, their hooks and failures")
    plugins.add_argument("--json", action="store_true")
    gallery = sub.add_parser("gallery", parents=common, help="recent images in the output folder, newest first")
    gallery.add_argument("--limit", type=int, default=20)
    gallery.add_argument("--json", action="store_true")
    tiny = sub.add_parser("make-tiny", parents=common, help="write a tiny random model (for trying without weights)")
    tiny.add_argument("dir")
    tiny.add_argument(
        "--write-registry",
        "--with-registry",
        action="store_true",
        help="put the model in DIR/model and write DIR/registry.toml pointing at it",
    )
    demo = sub.add_parser("demo", parents=common, help="no weights needed: tiny model, its registry, one image")
    demo.add_argument("--dir", default=default_demo_dir(), help="where the model, registry and images go")
    add_warm_arguments(sub.add_parser("warm", parents=common, help="load and compile variants ahead of time (cache)"))
    lora = sub.add_parser("lora", parents=common, help="LoRA tools")
    lora_sub = lora.add_subparsers(dest="lora_command", required=True)
    inspect = lora_sub.add_parser("inspect", parents=common, help="print what a LoRA file contains (JSON)")
    inspect.add_argument("file")
    return p


COMMANDS = {
    "serve": cmd_serve,
    "generate": cmd_generate,
    "pull": cmd_pull,
    "list": cmd_list,
    "plugins": cmd_plugins,
    "gallery": cmd_gallery,
    "make-tiny": cmd_make_tiny,
    "demo": cmd_demo,
    "lora": cmd_lora,
    "warm": cmd_warm,
}


def _debug(args: argparse.Namespace | None) -> bool:
    level = (getattr(args, "log_level", None) or os.environ.get("ZIMAGE_MCP_LOG_LEVEL") or "").upper()
    return level == "DEBUG"


def _hint(exc: BaseException) -> str | None:
    """The fix for an error of ours, when its message does not say it already."""
    from zimage_mcp.contract import BackendLoadError, RegistryError

    text = str(exc)
    me = command_name()
    if isinstance(exc, RegistryError) and "does not exist" in text:
        return (
            "fix the path in --registry or ZIMAGE_MCP_REGISTRY (or unset it to use the default); "
            f"`{me} make-tiny DIR --write-registry` writes one for a tiny test model"
        )
    if isinstance(exc, BackendLoadError):
        return (
            f"check the weights path in your registry file (`{me} list` shows where each variant is read "
            "from); re-download a damaged checkpoint with `hf download <repo>`"
        )
    return None


def _report(exc: BaseException) -> int:
    from zimage_mcp.contract import SettingsError

    if isinstance(exc, CliError):
        print(f"zimage-mcp: {exc}", file=sys.stderr)
        return exc.code
    if isinstance(exc, OSError) and not str(exc).strip().startswith("zimage"):
        where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"zimage-mcp: cannot use{where}: {exc.strerror or exc}", file=sys.stderr)
        print("check the path and its permissions (--out-dir, --registry, ZIMAGE_MCP_* paths)", file=sys.stderr)
        return 1
    lines = (str(exc).strip() or type(exc).__name__).splitlines()
    print(f"zimage-mcp: {lines[0][:500]}", file=sys.stderr)
    hint = _hint(exc)
    if hint:
        print(hint, file=sys.stderr)
    return 2 if isinstance(exc, SettingsError) else 1


def _quiet_broken_pipe() -> int:
    """A reader such as ``head`` went away: stop quietly (the CPython docs' recipe for SIGPIPE)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 0


def main(argv: list[str] | None = None) -> int:
    from zimage_mcp.contract import ZImageMCPError

    args = None
    try:
        args = _parser().parse_args(argv)
        command = args.command or "serve"
        if args.command is None:
            args.transport, args.host, args.port, args.attach = "stdio", "127.0.0.1", 8765, None
        code = COMMANDS[command](args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except KeyboardInterrupt:
        return 130
    except (CliError, ZImageMCPError, OSError) as exc:
        if _debug(args):
            raise
        try:
            return _report(exc)
        except BrokenPipeError:
            return 1
