"""Engine exceptions. The engine knows nothing of MCP or the registry; plugins translate these."""

from __future__ import annotations


class EngineError(Exception):
    """Base class for the engine's own errors."""


class WeightsError(EngineError):
    """Weights or configs missing, corrupt, or not matching the architecture; names the file and keys."""


class GenerationCancelled(EngineError):
    """``should_stop()`` returned True between two denoising steps."""


class InvalidArgument(EngineError, ValueError):
    """A caller's argument is out of range; ``field`` names it and ``allowed`` says what would do."""

    def __init__(self, field: str, allowed: str) -> None:
        super().__init__(f"{field}: {allowed}")
        self.field = field
        self.allowed = allowed
