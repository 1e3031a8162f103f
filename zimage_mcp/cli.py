"""``zimage-mcp``: serve over MCP (stdio, HTTP, or attached to a daemon) and a few direct commands.

stdout belongs to the protocol under ``serve``: logs go to stderr (or ``settings.log_file``). In stdio
mode the protocol is written to a private duplicate of fd 1 and, for the whole process lifetime, fd 1
and ``sys.stdout`` point at stderr, so a plugin's ``print()`` (at import, in a hook or in a factory)
can never reach the protocol stream.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from zimage_mcp import __version__

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [req %(request_id)s] %(message)s"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zimage-mcp", description="Z-Image MCP server and tools")
    p.add_argument("--version", action="version", version=__version__)
    p.add_argument("--registry", help="user registry TOML (ZIMAGE_MCP_REGISTRY)")
    p.add_argument("--out-dir", help="output folder (ZIMAGE_MCP_OUTPUT_DIR)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N, mps (ZIMAGE_MCP_DEVICE)")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING (ZIMAGE_MCP_LOG_LEVEL)")
    sub = p.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="run the MCP server (stdio by default)")
    serve.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--attach", metavar="URL", help="stdio front for a daemon: http://127.0.0.1:8765/mcp")
    gen = sub.add_parser("generate", help="generate one image directly (no MCP)")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--model")
    gen.add_argument("--width", type=int)
    gen.add_argument("--height", type=int)
    gen.add_argument("--steps", type=int)
    gen.add_argument("--seed", type=int)
    gen.add_argument("--out", help="also copy the PNG here")
    pull = sub.add_parser("pull", help="download weights through huggingface_hub")
    pull.add_argument("variant", help="a variant id or alias whose weights are published (turbo, base, ...)")
    sub.add_parser("list", help="variants with their installed status")
    sub.add_parser("plugins", help="loaded plugins and their hooks")
    tiny = sub.add_parser("make-tiny", help="write a tiny random checkpoint for tests")
    tiny.add_argument("dir")
    lora = sub.add_parser("lora", help="LoRA tools")
    lora_sub = lora.add_subparsers(dest="lora_command", required=True)
    inspect = lora_sub.add_parser("inspect", help="print what a LoRA file contains (JSON)")
    inspect.add_argument("file")
    return p


def _settings(args: argparse.Namespace) -> Any:
    from zimage_mcp.registry.settings import Settings

    return Settings.from_env(
        registry_file=args.registry, output_dir=args.out_dir, device=args.device, log_level=args.log_level
    )


def setup_logging(level: str, log_file: Path | None) -> None:
    """Logs go to stderr or the log file, never stdout; each line carries the MCP request id."""
    from zimage_mcp.server import RequestIdFilter

    handler: logging.Handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def protect_stdout() -> io.BufferedWriter:
    """Move the protocol to a private copy of fd 1; fd 1 and ``sys.stdout`` now write to stderr.

    Returns the binary stream that alone carries the protocol. Called before settings, logging or
    plugins are touched, so nothing printed later (C extensions included) can corrupt the wire.
    """
    sys.stdout.flush()
    wire_fd = os.dup(1)
    os.set_inheritable(wire_fd, False)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(wire_fd, "wb", buffering=0, closefd=False)  # type: ignore[return-value]


def _run_stdio(server: Any, wire: io.BufferedWriter) -> None:
    """Serve ``server`` (an ``MCPServer`` or a low-level ``Server``) over stdin and ``wire``."""
    import anyio
    from mcp.server.stdio import stdio_server

    low = getattr(server, "_lowlevel_server", server)

    async def run() -> None:
        out = anyio.wrap_file(io.TextIOWrapper(wire, encoding="utf-8", write_through=True))
        async with stdio_server(stdout=out) as (read, write):
            await low.run(read, write, low.create_initialization_options())

    anyio.run(run)


def cmd_serve(args: argparse.Namespace) -> int:
    wire = protect_stdout() if args.transport == "stdio" or args.attach else None
    settings = _settings(args)
    setup_logging(settings.log_level, settings.log_file)
    if args.attach:
        from zimage_mcp.server.attach import build_attach_server

        assert wire is not None
        _run_stdio(build_attach_server(args.attach, settings.token), wire)
        return 0
    from zimage_mcp.server import build_server

    if args.transport == "http":
        from zimage_mcp.server.http_app import LOCAL_HOSTS, serve_http

        if args.host.strip("[]") not in LOCAL_HOSTS and not settings.token:
            print(f"refusing to listen on {args.host} without a token: set ZIMAGE_MCP_TOKEN (clients then send "
                  "'Authorization: Bearer <token>') or bind 127.0.0.1", file=sys.stderr)
            return 2
        mcp = build_server(settings)
        logging.getLogger(__name__).info("serving on http://%s:%d/mcp", args.host, args.port)
        serve_http(mcp, args.host, args.port, settings.log_level)
    else:
        assert wire is not None
        _run_stdio(build_server(settings), wire)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from zimage_mcp.contract import ZImageMCPError
    from zimage_mcp.registry import Registry
    from zimage_mcp.server.generation import make_work
    from zimage_mcp.server.jobs import JobManager
    from zimage_mcp.server.metrics import Metrics
    from zimage_mcp.server.preparation import prepare_generate
    from zimage_mcp.store import ImageStore

    settings = _settings(args)
    setup_logging("WARNING", settings.log_file)
    registry = Registry.from_settings(settings)
    try:
        prepared = prepare_generate(
            registry,
            model=args.model,
            loras=[],
            prompt=args.prompt,
            negative_prompt=None,
            width=args.width,
            height=args.height,
            steps=args.steps,
            guidance=None,
            seed=args.seed,
            count=1,
        )
        jobs = JobManager(1, settings.job_timeout_seconds)
        job = jobs.create(prepared.variant_id, prepared.request.steps)
        work = make_work(registry, ImageStore(settings.output_dir), Metrics(), prepared, "png")
        outcome = jobs.execute(job, work, _progress_bar)
    except ZImageMCPError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    finally:
        registry.unload_all()
    sys.stderr.write("\n")
    stored = outcome.images[0][0]
    if args.out:
        Path(args.out).write_bytes(stored.path.read_bytes())
    print(json.dumps({"path": str(Path(args.out).resolve()) if args.out else str(stored.path), "id": stored.id,
                      "seed": outcome.result.seed, "elapsed_seconds": outcome.result.elapsed_seconds}))
    return 0


def _progress_bar(value: float, total: float, message: str) -> None:
    width = 30
    filled = int(width * value / total) if total else 0
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {message[:50]:<50}")
    sys.stderr.flush()


def cmd_pull(args: argparse.Namespace) -> int:
    from zimage_mcp.registry.catalog import catalog_from_settings

    repos = catalog_from_settings(_settings(args)).published_repos()  # variant id and aliases -> repo
    repo = repos.get(args.variant.strip().lower())
    if repo is None:
        print(f"pull: no published weights for {args.variant!r}; choose from: {', '.join(sorted(repos))}",
              file=sys.stderr)
        return 2
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        print("huggingface_hub is not installed: pip install 'zimage-mcp[hub]'", file=sys.stderr)
        return 2
    try:
        path = snapshot_download(repo)
    except Exception as exc:  # offline, gated, disk full: say what happened in one line
        print(f"could not download {repo}: {type(exc).__name__}: {exc}", file=sys.stderr)
        print("check the network (or HF_HUB_OFFLINE), HF_TOKEN and disk space", file=sys.stderr)
        return 1
    print(f"{repo} is in {path}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from zimage_mcp.registry import Registry
    from zimage_mcp.server.tool_models import describe_models

    settings = _settings(args)
    info = describe_models(Registry.from_settings(settings), str(settings.output_dir))
    for v in info.variants:
        state = f"installed ({v.location})" if v.installed else f"missing: {v.how_to_install}"
        marker = "*" if v.id == info.default_model else " "
        print(f"{marker} {v.id:<24} {v.kind:<6} {state}")
    for lora in info.loras:
        print(f"  lora {lora.name:<19} {lora.file}")
    for problem in info.problems:
        print(f"  problem: {problem}")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from zimage_mcp.registry import Registry
    from zimage_mcp.registry.plugin_manager import describe_plugins

    registry = Registry.from_settings(_settings(args))
    print(json.dumps(describe_plugins(registry.plugin_manager), indent=2, default=str))
    return 0


def cmd_make_tiny(args: argparse.Namespace) -> int:
    from zimage_mcp.engine.presets.tiny import make_tiny

    print(make_tiny(Path(args.dir)))
    return 0


def cmd_lora(args: argparse.Namespace) -> int:
    try:
        from zimage_mcp.engine.weights.lora_inspect import inspect_lora
    except ImportError:
        print("lora inspect is not available in this build (zimage_mcp.engine.lora_inspect missing)", file=sys.stderr)
        return 2
    try:
        report = inspect_lora(Path(args.file))
    except Exception as exc:  # a missing or malformed file: one clear line, no traceback
        print(f"cannot inspect {args.file}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2, default=str))
    return 0


COMMANDS = {
    "serve": cmd_serve, "generate": cmd_generate, "pull": cmd_pull, "list": cmd_list, "plugins": cmd_plugins,
    "make-tiny": cmd_make_tiny, "lora": cmd_lora,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = args.command or "serve"
    if args.command is None:
        args.transport, args.host, args.port, args.attach = "stdio", "127.0.0.1", 8765, None
    from zimage_mcp.contract import SettingsError

    try:
        return COMMANDS[command](args)
    except SettingsError as exc:  # a bad variable or [runtime] value: one line naming it, no traceback
        print(f"zimage-mcp: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
