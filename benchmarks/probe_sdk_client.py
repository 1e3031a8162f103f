"""Where a reply's time goes once the server has built it: the server's serialisation, the pipe, and the
Python SDK client's own parsing and validation (RESULTS §20).

    python3 benchmarks/probe_sdk_client.py --registry /tmp/zimage-bench/run-tiny/registry.toml

The real server (``python -m zimage_mcp serve``) runs over stdio under ``benchmarks/request_trace`` (its
``result_built`` and ``write_start`` marks); this process is the official SDK client, with its line parser
wrapped to mark when the result's line is complete (``client_line``) and parsed (``client_parsed``), and
``client_recv`` once ``call_tool`` returns. One JSON line of median hops in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import mcp.client.stdio as sdk_stdio
from mcp import Client, StdioServerParameters

HERE = Path(__file__).resolve().parent
HOPS = (("result_built", "write_start"), ("write_start", "client_line"), ("client_line", "client_parsed"))
HOPS += (("client_parsed", "client_recv"),)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--registry", required=True, help="registry file for the server (ZIMAGE_MCP_REGISTRY)")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--runs", type=int, default=12)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        trace = Path(folder) / "marks.txt"
        calls = asyncio.run(run(args, trace, Path(folder) / "out"))
    hops = {f"{a}->{b}": round(statistics.median((c[b] - c[a]) * 1000 for c in calls), 3) for a, b in HOPS}
    print(json.dumps({"probe": "sdk_client_reply_ms", "size": args.size, "runs": len(calls), **hops}))


async def run(args: argparse.Namespace, trace: Path, out: Path) -> list[dict[str, float]]:
    os.environ["ZIMAGE_BENCH_REQUEST_TRACE"] = str(trace)  # read by request_trace at its import, and by the server
    from request_trace.sitecustomize import mark
    from request_trace.spans import call_marks

    parse = sdk_stdio._parse_line

    def marked_parse(line: str) -> Any:
        result = '"structuredContent"' in line
        if result:
            mark("client_line")
        message = parse(line)
        if result:
            mark("client_parsed")
        return message

    sdk_stdio._parse_line = marked_parse  # looked up at each line
    env = dict(os.environ, ZIMAGE_MCP_REGISTRY=str(Path(args.registry).resolve()), ZIMAGE_MCP_OUTPUT_DIR=str(out))
    env["PYTHONPATH"] = os.pathsep.join([str(HERE / "request_trace"), env.get("PYTHONPATH", "")])
    calls = []
    async with Client(StdioServerParameters(command=sys.executable, args=["-m", "zimage_mcp", "serve"], env=env)) as c:
        await c.list_tools()
        for i in range(args.runs + 2):  # two warm-up calls
            offset = trace.stat().st_size if trace.exists() else 0
            mark("client_send")
            request = {"prompt": f"a fox {i}", "width": args.size, "height": args.size, "seed": i}
            result = await c.call_tool("generate_image", request)
            mark("client_recv")
            if result.is_error:
                raise SystemExit(result.content[0].text)
            if i >= 2:
                calls.append(offset)
            await asyncio.sleep(0.3)
    data = trace.read_bytes()
    return [call_marks(data, offset) for offset in calls]


if __name__ == "__main__":
    main()
