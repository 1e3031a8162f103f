"""Exception classes. Torch-free; the server maps them to MCP ``ToolError`` texts."""

from __future__ import annotations


class ZImageMCPError(Exception):
    """Base class for every error zimage-mcp raises on purpose."""


class InvalidRequestError(ZImageMCPError, ValueError):
    """A request argument is out of range; the message names the field and the allowed values."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class UnknownVariantError(ZImageMCPError, KeyError):
    """No variant or alias of that name; the message lists the valid names."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown variant"


class UnknownLoraError(ZImageMCPError, KeyError):
    """No LoRA of that name; the message lists the valid names."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown LoRA"


class RegistryError(ZImageMCPError):
    """A malformed registry file, sidecar or plugin registration; the message names file, table and key."""


class NotInstalledError(ZImageMCPError):
    """A variant's weights are not on this machine; the message says how to install them."""


class BackendLoadError(ZImageMCPError):
    """A backend failed to build; only that variant is marked failed."""


class GenerationCancelled(ZImageMCPError):
    """The caller cancelled; raised between denoising steps."""


class OutOfMemoryError(ZImageMCPError):
    """The device ran out of memory; the message says what to lower."""


class UnsupportedEditError(ZImageMCPError):
    """The variant cannot do the requested edit mode; the message lists what it can do."""


class SettingsError(ZImageMCPError, ValueError):
    """An environment variable or setting has a value of the wrong type; the message names the variable."""
