"""The ``[ray]`` table as deployment options: replicas, autoscaling, placement and multiplexing. No ray import."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from zimage_mcp.contract import RegistryError

APP_NAME = "zimage"
DEPLOYMENT_NAME = "ZImageEngine"


@dataclass(frozen=True)
class ScaleOptions:
    """How the engine deployment runs. ``num_gpus=None``: one GPU per replica when the cluster has GPUs, else 0."""

    address: str | None = None  # None: start a local Ray; "auto" or "host:port": join a cluster
    min_replicas: int = 1
    max_replicas: int = 1
    initial_replicas: int | None = None
    target_ongoing_requests: float = 1.0
    max_ongoing_requests: int = 1  # requests one replica runs at once (1: one generation per GPU)
    max_models_per_replica: int = 2  # (variant, LoRA set) pairs a replica keeps warm for routing
    num_gpus: float | None = None
    num_cpus: float = 1.0
    resources: dict[str, float] = dataclasses.field(default_factory=dict)  # custom Ray resources per replica
    downscale_delay_s: float = 600.0
    retries: int = 1  # transparent re-sends when a replica dies mid-request

    @classmethod
    def from_table(cls, table: dict[str, Any], address: str | None = None) -> ScaleOptions:
        """From the catalogue's checked ``[ray]`` table; ``address`` (``--ray ADDRESS``) wins over ``[ray] address``."""
        values = {k: v for k, v in table.items() if k in {f.name for f in dataclasses.fields(cls)}}
        for key in ("min_replicas", "max_replicas", "initial_replicas", "max_ongoing_requests"):
            if key in values:
                values[key] = int(values[key])
        if address:
            values["address"] = address
        options = cls(**values)
        if options.min_replicas > options.max_replicas:
            raise RegistryError(
                f"[ray] min_replicas ({options.min_replicas}) is greater than max_replicas ({options.max_replicas})"
            )
        if options.target_ongoing_requests <= 0:
            raise RegistryError("[ray] target_ongoing_requests: must be a number > 0")
        return options

    @property
    def max_concurrent(self) -> int:
        """Generations the front may have in flight at once: every replica busy at its limit."""
        return self.max_replicas * self.max_ongoing_requests

    def deployment_options(self, cluster_gpus: float) -> dict[str, Any]:
        """Keyword arguments for ``Deployment.options``."""
        gpus = self.num_gpus if self.num_gpus is not None else (1.0 if cluster_gpus > 0 else 0.0)
        actor: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": gpus}
        if self.resources:
            actor["resources"] = dict(self.resources)
        options: dict[str, Any] = {
            "name": DEPLOYMENT_NAME,
            "ray_actor_options": actor,
            "max_ongoing_requests": self.max_ongoing_requests,
            "health_check_period_s": 2.0,
            "health_check_timeout_s": 30.0,
            "graceful_shutdown_timeout_s": 5.0,
        }
        if self.min_replicas == self.max_replicas:
            options["num_replicas"] = self.max_replicas
        else:
            options["autoscaling_config"] = {
                "min_replicas": self.min_replicas,
                "max_replicas": self.max_replicas,
                "initial_replicas": self.initial_replicas,
                "target_ongoing_requests": self.target_ongoing_requests,
                "downscale_delay_s": self.downscale_delay_s,
                "upscale_delay_s": 0.0,
            }
        return options
