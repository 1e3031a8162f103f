"""The torch-free contract: the types and errors that cross between the server, the registry and the plugins.

Nothing here imports torch, the engine or the MCP SDK. The server talks to backends only through these
dataclasses and the ``Backend`` protocol; plugins adapt the engine to them.
"""

from zimage_mcp.contract.backend import (
    Backend,
    BackendContext,
    BackendFactory,
    BackgroundCompiling,
    Phase,
    ProgressCallback,
    StopCheck,
    WarmableBackend,
)
from zimage_mcp.contract.errors import (
    BackendLoadError,
    GenerationCancelled,
    InvalidRequestError,
    NotInstalledError,
    OutOfMemoryError,
    RegistryError,
    SettingsError,
    UnknownLoraError,
    UnknownVariantError,
    UnsupportedEditError,
    ZImageMCPError,
)
from zimage_mcp.contract.request import ControlHint, GenerationRequest, GenerationResult, LoraRef, Pixels
from zimage_mcp.contract.variant import (
    Capabilities,
    Defaults,
    EditMode,
    Limits,
    LoraSpec,
    VariantKind,
    VariantSpec,
    WeightsLocation,
)

__all__ = [
    "Backend",
    "BackendContext",
    "BackendFactory",
    "BackendLoadError",
    "Capabilities",
    "ControlHint",
    "Defaults",
    "EditMode",
    "GenerationCancelled",
    "GenerationRequest",
    "GenerationResult",
    "InvalidRequestError",
    "Limits",
    "LoraRef",
    "LoraSpec",
    "NotInstalledError",
    "OutOfMemoryError",
    "Phase",
    "Pixels",
    "ProgressCallback",
    "RegistryError",
    "SettingsError",
    "StopCheck",
    "UnknownLoraError",
    "UnknownVariantError",
    "UnsupportedEditError",
    "VariantKind",
    "VariantSpec",
    "BackgroundCompiling",
    "WarmableBackend",
    "WeightsLocation",
    "ZImageMCPError",
]
