"""An MCP client driving zimage-mcp over stdio: generate an image, then edit that result by its id.

    python examples/client_call.py                       # your registry (real weights), variant defaults
    python examples/client_call.py --registry DIR/registry.toml   # e.g. the tiny model of `./run.sh cli demo`
This is what an assistant does in a chat: each edit passes the id of the previous result. The server is
this Python's `python -m zimage_mcp serve`, started over stdio by the SDK client.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from mcp import Client, StdioServerParameters


async def run(size: int | None, steps: int | None, registry: str | None, out_dir: str | None) -> None:
    env = dict(os.environ)
    if registry:
        env["ZIMAGE_MCP_REGISTRY"] = os.path.abspath(registry)
    if out_dir:
        env["ZIMAGE_MCP_OUTPUT_DIR"] = os.path.abspath(out_dir)
    server = StdioServerParameters(command=sys.executable, args=["-m", "zimage_mcp", "serve"], env=env)
    sizes = {"width": size, "height": size} if size else {}
    step = {"steps": steps} if steps else {}
    async with Client(server) as client:

        async def progress(done: float, total: float | None, message: str | None) -> None:
            print(f"  {done:.0f}/{total or 0:.0f} {message or ''}", file=sys.stderr)

        first = await client.call_tool(
            "generate_image",
            {"prompt": "a quiet harbour at dawn", **sizes, **step, "seed": 1},
            progress_callback=progress,
        )
        if first.is_error:
            raise SystemExit(first.content[0].text)
        image = first.structured_content["images"][0]
        print("generated", image["id"], image["path"])
        edited = await client.call_tool(
            "edit_image",
            {"image": image["id"], "instruction": "the same harbour at night", "strength": 0.7, **step, "seed": 2},
            progress_callback=progress,
        )
        if edited.is_error:
            raise SystemExit(edited.content[0].text)
        info = edited.structured_content
        print("edited", info["images"][0]["id"], "from parent", info["parent"], "mode", info["mode"])


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--registry",
        default=os.environ.get("ZIMAGE_MCP_REGISTRY"),
        help="registry file for the server (ZIMAGE_MCP_REGISTRY)",
    )
    ap.add_argument("--out-dir", help="where the server saves images (ZIMAGE_MCP_OUTPUT_DIR)")
    ap.add_argument("--size", type=int, help="width and height (the variant's default when omitted)")
    ap.add_argument("--steps", type=int, help="denoising steps (the variant's default when omitted)")
    a = ap.parse_args()
    asyncio.run(run(a.size, a.steps, a.registry, a.out_dir))
