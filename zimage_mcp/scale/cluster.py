"""Start or join Ray, deploy the engine replicas, and build the front's registry that sends work to them."""

from __future__ import annotations

import logging
from typing import Any

import ray
from ray import serve

from zimage_mcp.registry import Settings
from zimage_mcp.scale.config import APP_NAME, ScaleOptions
from zimage_mcp.scale.proxy import RayRegistry
from zimage_mcp.scale.replica import engine_app
from zimage_mcp.scale.stats import ReplicaStats

log = logging.getLogger(__name__)
LOCAL_IP = "127.0.0.1"


def connect(address: str | None, num_cpus: int | None = None) -> None:
    """Join the cluster at ``address`` ("auto", "host:port", "ray://..."), or start a local one on 127.0.0.1."""
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address=LOCAL_IP, log_to_driver=False)


def deploy(settings: Settings, options: ScaleOptions) -> Any:
    """Run the engine deployment (no Serve HTTP proxy: the MCP front is the only listener) and return its handle."""
    serve.start(proxy_location="Disabled", http_options={"host": LOCAL_IP})
    gpus = float(ray.cluster_resources().get("GPU", 0.0))
    app = engine_app(settings, options, gpus)
    handle = serve.run(app, name=APP_NAME, route_prefix=None, blocking=False)
    log.info("engine deployment up: %s", options.deployment_options(gpus))
    return handle


def front_registry(settings: Settings, address: str | None = None, num_cpus: int | None = None) -> RayRegistry:
    """The registry ``build_server`` gets under ``--ray``: the catalogue's ``[ray]`` table, Ray joined, replicas up."""
    registry = RayRegistry.from_settings(settings)
    options = ScaleOptions.from_table(registry.catalog.ray, address)
    connect(options.address, num_cpus)
    handle = deploy(settings, options)
    registry.attach(handle, ReplicaStats(), options.retries, options.max_concurrent)
    return registry  # type: ignore[return-value]


def shutdown() -> None:
    """Remove the deployment and leave Ray (a local Ray started by ``connect`` stops with it)."""
    if ray.is_initialized():
        serve.shutdown()
        ray.shutdown()
