"""Crash safety: SIGKILL the HTTP daemon while it writes images, restart, and check every reported image.

Every image a client was told about must be readable through its resource link after the restart;
the index rebuilds itself from the sidecars (also when it is deleted or lacks entries); temp files
are never listed as images.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import time
from pathlib import Path

import anyio
import pytest
from mcp import Client

from tests.server_fixtures import (  # noqa: F401
    SyncClient,
    anyio_backend,
    free_port,
    input_dir,
    registry_file,
    settings,
    start_http_server,
    stop,
    tiny_model_dir,
)
from zimage_mcp.registry.settings import Settings
from zimage_mcp.server import build_server

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
ARGS = {"prompt": "a ship", "width": 256, "height": 256, "steps": 2, "count": 2, "preview": "none"}


async def test_sigkill_while_writing_loses_no_reported_image(settings: Settings) -> None:
    port = free_port()
    proc = start_http_server(settings, port)
    reported: list[str] = []
    try:

        async def writer(n: int) -> None:
            async with Client(f"http://127.0.0.1:{port}/mcp", read_timeout_seconds=60) as client:
                for i in range(40):
                    result = await client.call_tool("generate_image", {**ARGS, "seed": n * 1000 + i})
                    reported.extend(img["id"] for img in result.structured_content["images"])

        with anyio.move_on_after(60):
            async with anyio.create_task_group() as tg:
                for n in range(3):
                    tg.start_soon(writer, n)
                while len(reported) < 12:
                    await anyio.sleep(0.02)
                await anyio.sleep(0.13)  # land the kill in the middle of later saves
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
                tg.cancel_scope.cancel()
    finally:
        stop(proc)
    assert proc.returncode == -signal.SIGKILL and len(reported) >= 12
    images = Path(settings.output_dir) / "images"
    # leftovers a killed writer could leave: temp files that must never count as images
    (images / ".tmp-deadbeef").write_bytes(b"\x89PNG half")
    (images / ".tmp-cafe.json").write_text(json.dumps({"id": "cafe"}))
    (images / "notanid.json").write_text("{}")
    on_disk = sorted(p.stem for p in images.glob("*.json") if not p.name.startswith("."))

    for damage in ("none", "delete", "stale"):
        index = Path(settings.output_dir) / "index.txt"
        if damage == "delete":
            index.unlink()
        elif damage == "stale":
            index.write_text("".join(i + "\n" for i in reported[:3]))
        server = build_server(settings)
        with SyncClient(server) as client:
            for image_id in reported:  # every image reported to a client is readable by its link
                blob = client.read(f"zimage://images/{image_id}").contents[0]
                assert base64.b64decode(blob.blob).startswith(b"\x89PNG"), image_id
            gallery = json.loads(client.read("zimage://gallery/recent").contents[0].text)["images"]
        listed = {g["id"] for g in gallery}
        assert set(reported[-10:]) <= listed or len(listed) == 50
        assert not any(i.startswith(".") or "tmp" in i or i == "notanid" for i in listed)
        ids = index.read_text().split()
        assert set(ids) == {i for i in on_disk if len(i) == 12}, damage  # the index matches the sidecars
        assert set(reported) <= set(ids)
    assert (images / ".tmp-deadbeef").exists()  # fresh temp files are left for a possibly live writer
    old = time.time() - 3600
    os.utime(images / ".tmp-deadbeef", (old, old))
    build_server(settings)
    assert not (images / ".tmp-deadbeef").exists()  # stale ones are cleaned at startup
