"""``zimage-mcp serve``: stdio (what a host launches), the HTTP daemon, or a stdio front ``--attach``ed to it.

stdout belongs to the protocol in stdio mode: the ready line and logs go to stderr (or the log file).
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

from zimage_mcp.cli.common import (
    CliError,
    command_name,
    keep_engine_bytecode,
    protect_stdout,
    settings_from,
    setup_logging,
)
from zimage_mcp.cli.heap import keep_freed_memory

if TYPE_CHECKING:
    import argparse

    import pluggy

    from zimage_mcp.registry import Registry
    from zimage_mcp.registry.settings import Settings

# How long a thread waiting for the GIL lets the holder run before asking for it (Python's default: 5 ms).
# The thread that feeds the GPU waits for it after every synchronisation, while other requests' encoders,
# previews and replies hold it in turns: at 5 ms that was milliseconds of an idle GPU per request in flight.
GIL_SWITCH_SECONDS = 0.001
# How long `serve` lets the plugins' preparation run alone before importing the MCP stack beside it (a GPU host
# with torch's bytecode needs about 2 s; the first start after installing, compiling torch, about 4 s).
PREPARE_ALONE_SECONDS = 5.0


def ready_line(transport: str, address: str, output_dir: Any, installed: list[str]) -> None:
    """One line on stderr once the server is built (never stdout: in stdio mode that is the MCP wire)."""
    variants = ", ".join(installed) if installed else "none (see `list_models`, or `pull turbo`)"
    print(
        f"zimage-mcp ready: {transport} {address}; images in {output_dir}; installed: {variants}",
        file=sys.stderr,
        flush=True,
    )


def _installed(mcp: Any) -> list[str]:
    registry = mcp.state.registry
    return [e.spec.id for e in registry.variants() if registry.install_status(e.spec.id).installed]


def _local_registry(settings: Settings, pm: pluggy.PluginManager | None = None) -> Registry:
    """The registry, with the plugins' ``zimage_prepare`` (for the engine: importing torch and the engine,
    the CUDA context) run first, alone, for up to ``PREPARE_ALONE_SECONDS``, and only then the MCP stack
    imported. Both imports hold the GIL: side by side, each waited for the other, and the engine was ready
    2.1-2.5 s after start against 1.2-1.3 s alone (on an H100 host, RESULTS §16). A first request needs the
    engine, and ``initialize`` comes a few tenths of a second later instead. A preparation that takes longer
    (a slow driver, a hanging plugin) goes on beside the server, as before."""
    from zimage_mcp.registry import Registry

    registry = Registry.from_settings(settings, pm)
    if settings.prepare_at_start:
        registry.prepare_in_background()
        registry.preparation.wait(PREPARE_ALONE_SECONDS)
    return registry


def cmd_serve(args: argparse.Namespace) -> int:
    wire = protect_stdout() if args.transport == "stdio" or args.attach else None
    settings = settings_from(args)
    setup_logging(settings.log_level, settings.log_file)
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    keep_freed_memory()
    keep_engine_bytecode(settings)
    if args.attach:
        import anyio

        from zimage_mcp.server.attach import build_attach_server, check_daemon
        from zimage_mcp.server.stdio_transport import run_stdio

        for noisy in ("httpx", "httpx2"):  # a line per HTTP request at INFO
            logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
        anyio.run(check_daemon, args.attach, settings.token, command_name() + " serve")
        assert wire is not None
        print(f"zimage-mcp ready: stdio, attached to {args.attach}", file=sys.stderr, flush=True)
        run_stdio(build_attach_server(args.attach, settings.token), wire)
        return 0
    ray_address = getattr(args, "ray", None)  # None: no --ray, and ray is never imported
    if args.transport == "http":  # a daemon: its start-up is not a host's wait, so the check goes first
        from zimage_mcp.server.http_app import LOCAL_HOSTS
    if args.transport == "http" and args.host.strip("[]") not in LOCAL_HOSTS and not settings.token:
        raise CliError(
            f"refusing to listen on {args.host} without a token: set ZIMAGE_MCP_TOKEN (clients "
            "then send 'Authorization: Bearer <token>') or bind 127.0.0.1",
            code=2,
        )
    if args.transport == "stdio" and ray_address is not None:
        raise CliError("--ray needs --transport http (one MCP endpoint in front of the replicas)", code=2)
    registry = _local_registry(settings) if ray_address is None else None
    from zimage_mcp.server import build_server
    from zimage_mcp.server.stdio_transport import run_stdio

    if args.transport == "http":
        from zimage_mcp.server.http_app import serve_http

        mcp = build_server(settings, registry if ray_address is None else _ray_registry(settings, ray_address))
        address = f"http://{args.host}:{args.port}/mcp"
        logging.getLogger(__name__).info("serving on %s", address)
        add_ray_metrics(mcp)
        ready_line("http", address, settings.output_dir, _installed(mcp))
        serve_http(mcp, args.host, args.port, settings.log_level)
    else:
        assert wire is not None
        mcp = build_server(settings, registry)
        mcp.state.progress_token_in_meta = True  # JSON-RPC: no token, no progress task (RESULTS §23)
        ready_line("stdio", "(stdin/stdout)", settings.output_dir, _installed(mcp))
        run_stdio(mcp, wire)
    return 0


def _ray_registry(settings: Any, address: str) -> Any:
    """The front's registry under ``--ray [ADDRESS]``: Ray joined (or started locally), engine replicas deployed.

    Per-replica queue depth and latency are added to ``/metrics`` by chaining the server's renderer.
    """
    from zimage_mcp.scale.cluster import front_registry

    registry = front_registry(settings, address or None)
    logging.getLogger(__name__).info("generation goes to Ray Serve (%d in flight at most)", registry.max_concurrent)
    return registry


def add_ray_metrics(mcp: Any) -> None:
    """Append the replicas' metrics to ``/metrics`` (a renderer hook in ``Metrics`` would make this one line)."""
    stats = getattr(mcp.state.registry, "stats", None)
    if stats is not None:
        render = mcp.state.metrics.render
        mcp.state.metrics.render = lambda: render() + stats.render()
