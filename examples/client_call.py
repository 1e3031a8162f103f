"""An MCP client driving zimage-mcp over stdio: generate an image, then edit that result by its id.

    python examples/client_call.py                       # uses the installed `zimage-mcp` and your registry
    ZIMAGE_MCP_REGISTRY=/path/registry.toml python examples/client_call.py --size 256 --steps 2
This is what an assistant does in a chat: each edit passes the id of the previous result.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from mcp import Client, StdioServerParameters


async def run(size: int, steps: int) -> None:
    server = StdioServerParameters(command=sys.executable, args=["-m", "zimage_mcp", "serve"], env=dict(os.environ))
    async with Client(server) as client:
        async def progress(done: float, total: float | None, message: str | None) -> None:
            print(f"  {done:.0f}/{total or 0:.0f} {message or ''}", file=sys.stderr)

        first = await client.call_tool("generate_image", {"prompt": "a quiet harbour at dawn", "width": size,
                                                          "height": size, "steps": steps, "seed": 1},
                                       progress_callback=progress)
        if first.is_error:
            raise SystemExit(first.content[0].text)
        image = first.structured_content["images"][0]
        print("generated", image["id"], image["path"])
        edited = await client.call_tool("edit_image", {"image": image["id"], "instruction": "the same harbour at night",
                                                       "strength": 0.7, "steps": steps, "seed": 2},
                                        progress_callback=progress)
        if edited.is_error:
            raise SystemExit(edited.content[0].text)
        info = edited.structured_content
        print("edited", info["images"][0]["id"], "from parent", info["parent"], "mode", info["mode"])


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=8)
    a = ap.parse_args()
    asyncio.run(run(a.size, a.steps))
