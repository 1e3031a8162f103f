"""An out-of-tree zimage-mcp plugin that registers one LoRA.

Install it next to zimage-mcp (``pip install -e examples/zimage-lora-example``) and restart the
server: ``zimage-mcp plugins`` lists ``zimage_lora_example`` and ``list_models`` shows the variant
``lora:example-style``. Block it with ``ZIMAGE_MCP_BLOCK_PLUGINS=zimage_lora_example``.

No weights ship with the example: ``LORA_FILE`` points at ``loras/example-style.safetensors``
inside this package. Registering does not open the file; until you put a real Z-Image LoRA there,
``install_status("lora:example-style")`` reports it missing and generating with it fails cleanly.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from zimage_mcp import hookimpl

if TYPE_CHECKING:
    from zimage_mcp.registry.hookspecs import RegisterLora

LORA_FILE = Path(__file__).resolve().parent / "loras" / "example-style.safetensors"


@hookimpl
def zimage_register_loras(register: RegisterLora) -> None:
    register(
        "example-style",
        str(LORA_FILE),
        base="z-image-turbo",
        scale=0.8,
        trigger_words=["exstyle"],
        description="Example LoRA from the zimage-lora-example package.",
    )
