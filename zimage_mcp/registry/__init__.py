"""The variant registry and its configuration: plugins, the catalogue, settings, installed weights, loaded backends.

Torch-free. ``Registry`` is the entry point; the rest is importable from its own module.
"""

from zimage_mcp.registry.install_status import InstallStatus
from zimage_mcp.registry.settings import Settings
from zimage_mcp.registry.variant_registry import Duplicate, Registry, VariantEntry

__all__ = ["Duplicate", "InstallStatus", "Registry", "Settings", "VariantEntry"]
