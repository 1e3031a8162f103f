"""The MCP server in memory, in both protocol modes, on the tiny real checkpoint through the registry."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, MCPError
from PIL import Image

from tests.server_fixtures import (  # noqa: F401
    anyio_backend,
    input_dir,
    registry_file,
    settings,
    tiny_model_dir,
)
from zimage_mcp.registry.settings import Settings
from zimage_mcp.server import build_server

pytestmark = pytest.mark.anyio
MODES = ["auto", "legacy"]
SMALL = {"width": 256, "height": 256, "steps": 2, "seed": 1234}


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _text(result: Any) -> str:
    return "\n".join(b.text for b in result.content if b.type == "text")


async def test_tool_schemas(settings: Settings, mode: str) -> None:
    async with Client(build_server(settings), mode=mode) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert sorted(tools) == ["cancel_job", "edit_image", "generate_image", "get_job", "list_models"]
    gen = tools["generate_image"]
    props = gen.input_schema["properties"]
    assert gen.input_schema["required"] == ["prompt"]
    for name in (
        "model",
        "negative_prompt",
        "width",
        "height",
        "steps",
        "guidance",
        "seed",
        "count",
        "loras",
        "output_format",
        "preview",
        "wait",
    ):
        assert name in props, name
    assert "multiples of 16" in (gen.description or "") and "z-image-turbo" in (gen.description or "")
    assert set(gen.output_schema["properties"]) >= {"images", "seed", "model", "timings", "job_id", "parent"}
    assert gen.annotations.read_only_hint is False and gen.annotations.open_world_hint is False
    assert tools["list_models"].annotations.read_only_hint is True
    edit_props = tools["edit_image"].input_schema["properties"]
    assert {"image", "prompt", "instruction", "mask", "control", "reference_images", "strength"} <= set(edit_props)
    assert all(t.output_schema for t in tools.values())
    assert "ctx" not in props


async def test_generate_content_budget_progress_and_files(settings: Settings, mode: str) -> None:
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total, message))

    async with Client(build_server(settings), mode=mode) as client:
        result = await client.call_tool(
            "generate_image", {"prompt": "a red fox", **SMALL}, progress_callback=on_progress
        )
    assert not result.is_error, _text(result)
    assert [b.type for b in result.content] == ["text", "text", "image", "resource_link"]
    data = result.structured_content
    image = data["images"][0]
    assert data["status"] == "done" and data["seed"] == 1234 and data["model"] == "z-image-turbo"
    assert (image["width"], image["height"], data["steps"]) == (256, 256, 2)
    assert Path(image["path"]).is_file() and image["path"] in result.content[0].text
    assert "seed 1234" in result.content[0].text
    assert json.loads(result.content[1].text)["images"][0]["id"] == image["id"]
    assert result.content[3].uri == f"zimage://images/{image['id']}"
    assert len(result.model_dump_json(by_alias=True)) < settings.preview_max_bytes
    preview = Image.open(__import__("io").BytesIO(base64.b64decode(result.content[2].data)))
    assert max(preview.size) <= 512
    assert preview.format == "JPEG" and result.content[2].mime_type == "image/jpeg"  # the fastest to encode
    values = [p[0] for p in progress]
    assert values == sorted(values) and len(set(values)) == len(values), progress
    assert all(p[1] == progress[-1][1] for p in progress) and values[-1] == progress[-1][1]
    messages = " ".join(str(p[2]) for p in progress)
    for phase in ("weights", "step", "saving", "done"):
        assert phase in messages, messages


async def test_preview_modes_and_formats(settings: Settings) -> None:
    async with Client(build_server(settings)) as client:
        none = await client.call_tool(
            "generate_image", {"prompt": "x", **SMALL, "preview": "none", "output_format": "webp"}
        )
        full = await client.call_tool(
            "generate_image", {"prompt": "x", **SMALL, "preview": "full", "count": 2, "output_format": "jpeg"}
        )
    assert [b.type for b in none.content] == ["text", "text", "resource_link"]
    assert none.structured_content["images"][0]["mime_type"] == "image/webp"
    assert [b.type for b in full.content].count("image") == 2
    assert [i["seed"] for i in full.structured_content["images"]] == full.structured_content["seeds"]
    assert len(full.model_dump_json()) < settings.preview_max_bytes


@pytest.mark.parametrize(
    "args, words",
    [
        ({"width": 65}, ["width", "multiples of 16"]),
        ({"height": 4096}, ["height", "256"]),
        ({"model": "sdxl"}, ["sdxl", "z-image-turbo"]),
        ({"loras": [{"name": "nope", "scale": 1.0}]}, ["nope"]),
        ({"steps": 500}, ["steps", "100"]),
        ({"count": 9}, ["count"]),
        ({"output_format": "gif"}, ["output_format"]),
    ],
)
async def test_invalid_arguments_are_tool_errors(settings: Settings, args: dict[str, Any], words: list[str]) -> None:
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("generate_image", {"prompt": "x", **args})
        assert result.is_error
        for word in words:
            assert word in _text(result), _text(result)
        ok = await client.call_tool("list_models", {})  # the server keeps serving
        assert not ok.is_error


async def test_list_models(settings: Settings, mode: str) -> None:
    async with Client(build_server(settings), mode=mode) as client:
        result = await client.call_tool("list_models", {})
    data = result.structured_content
    turbo = next(v for v in data["variants"] if v["id"] == "z-image-turbo")
    assert turbo["installed"] and turbo["location"] and not turbo["loaded"]
    assert turbo["limits"]["min_side"] == 256 and turbo["defaults"]["steps"] == 2
    assert "img2img" in turbo["edit_modes"]
    missing = [v for v in data["variants"] if not v["installed"]]
    assert missing and all(v["how_to_install"] for v in missing)  # says what to pull
    assert "z-image-turbo" in _text(result)


async def test_resources_survive_restart(settings: Settings, mode: str) -> None:
    async with Client(build_server(settings), mode=mode) as client:
        made = await client.call_tool("generate_image", {"prompt": "lighthouse", **SMALL})
    image_id = made.structured_content["images"][0]["id"]
    async with Client(build_server(settings), mode=mode) as client:  # a new server on the same folder
        templates = {t.uri_template for t in (await client.list_resource_templates()).resource_templates}
        assert {"zimage://images/{id}", "zimage://images/{id}/metadata"} <= templates
        blob = (await client.read_resource(f"zimage://images/{image_id}")).contents[0]
        assert blob.mime_type == "image/png"
        assert base64.b64decode(blob.blob).startswith(b"\x89PNG")
        meta = json.loads((await client.read_resource(f"zimage://images/{image_id}/metadata")).contents[0].text)
        assert meta["prompt"] == "lighthouse" and meta["seed"] == 1234
        gallery = json.loads((await client.read_resource("zimage://gallery/recent")).contents[0].text)
        assert gallery["images"][0]["id"] == image_id
        models = json.loads((await client.read_resource("zimage://models")).contents[0].text)
        assert models["default_model"] == "z-image-turbo"
        for bad in ("zimage://images/..%2F..%2Fetc", "zimage://images/000000000000"):
            with pytest.raises(MCPError):
                await client.read_resource(bad)


async def test_cancellation_frees_the_gpu_lock(settings: Settings, mode: str) -> None:
    server = build_server(settings)
    async with Client(server, mode=mode) as client:
        warm = await client.call_tool("generate_image", {"prompt": "warm up", **SMALL})  # load weights first
        assert not warm.is_error
        with pytest.raises(MCPError):
            await client.call_tool(
                "generate_image",
                {"prompt": "slow", "width": 256, "height": 256, "steps": 100},
                read_timeout_seconds=0.3,
            )
        slow = next(j for j in server.state.jobs._jobs.values() if j.total == 104)  # 100 steps + 4 phases
        with anyio.fail_after(120):  # a bound against hanging, not a timing assertion
            while not slow.finished.is_set():
                await anyio.sleep(0.02)
        # The engine stopped within its steps (it did not run all 100) and gave the GPU back.
        assert slow.state == "cancelled" and slow.progress < slow.total - 4, (slow.state, slow.progress)
        after = await client.call_tool("generate_image", {"prompt": "next", **SMALL})
        assert not after.is_error, _text(after)
        assert after.structured_content["queue_ticket"] > slow.ticket
    assert not server.state.jobs.lock.held
    cancelled = [p for p in (Path(settings.output_dir) / "images").iterdir() if p.name.startswith(".tmp-")]
    assert not cancelled


async def test_wait_false_then_get_job(settings: Settings, mode: str) -> None:
    async with Client(build_server(settings), mode=mode) as client:
        queued = await client.call_tool("generate_image", {"prompt": "later", **SMALL, "wait": False})
        assert not queued.is_error and queued.structured_content["status"] in ("queued", "running")
        job_id = queued.structured_content["job_id"]
        assert job_id in _text(queued)
        done = await client.call_tool("get_job", {"job_id": job_id, "wait_seconds": 50})
        assert done.structured_content["status"] == "done", _text(done)
        assert done.structured_content["job_id"] == job_id and done.structured_content["images"]
        missing = await client.call_tool("get_job", {"job_id": "nope"})
        assert missing.is_error and "job_id" in _text(missing)
        slow = await client.call_tool(
            "generate_image", {"prompt": "slow", "width": 256, "height": 256, "steps": 100, "wait": False}
        )
        cancelled = await client.call_tool("cancel_job", {"job_id": slow.structured_content["job_id"]})
        assert cancelled.structured_content["status"] == "cancelled"


async def test_edit_an_earlier_result_by_id(settings: Settings, mode: str) -> None:
    async with Client(build_server(settings), mode=mode) as client:
        made = await client.call_tool("generate_image", {"prompt": "a house", **SMALL})
        parent = made.structured_content["images"][0]["id"]
        control = await client.call_tool(
            "edit_image", {"image": parent, "prompt": "x", "control": {"type": "canny", "image": parent}}
        )
        assert control.is_error and "control" in _text(control) and "img2img" in _text(control)
        edited = await client.call_tool(
            "edit_image", {"image": parent, "instruction": "make it blue", "strength": 0.5, "steps": 2, "seed": 7}
        )
        assert not edited.is_error, _text(edited)
        data = edited.structured_content
        assert data["parent"] == parent and data["mode"] == "img2img" and data["edit"]["strength"] == 0.5
        child = data["images"][0]["id"]
        meta = json.loads((await client.read_resource(f"zimage://images/{child}/metadata")).contents[0].text)
        assert meta["parent"] == parent and meta["edit"]["mode"] == "img2img"


async def test_edit_input_errors(settings: Settings, input_dir: Path, tmp_path: Path) -> None:
    (input_dir / "notes.png").write_text("not an image")
    outside = tmp_path / "outside.png"
    Image.new("RGB", (64, 64)).save(outside)
    async with Client(build_server(settings)) as client:
        for image, words in (
            (str(input_dir / "notes.png"), "not a readable image"),
            (str(outside), "outside the allowed folders"),
            (str(input_dir / ".." / "outside.png"), "outside the allowed folders"),
            ("ffffffffffff", "no image with id"),
        ):
            result = await client.call_tool("edit_image", {"image": image, "prompt": "x"})
            assert result.is_error and words in _text(result) and "image" in _text(result)
