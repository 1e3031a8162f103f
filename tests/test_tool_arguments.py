"""Tool arguments through the real SDK client: unknown names refused, plain-words validation errors, short
quotes of user values, invisible prompts, LoRA-variant lineage, edit-variant refusals, cancel_job wording and
unknown tools as JSON-RPC -32602."""

# ruff: noqa: F811
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, MCPError
from PIL import Image

from tests.server_fixtures import (  # noqa: F401
    anyio_backend,
    input_dir,
    make_settings,
    registry_file,
    result_text,
    settings,
    tiny_model_dir,
)
from zimage_mcp.registry.settings import Settings
from zimage_mcp.server import build_server

pytestmark = pytest.mark.anyio
SMALL = {"width": 256, "height": 256, "steps": 2, "seed": 7}


@pytest.fixture(params=["auto", "legacy"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.parametrize(
    ("tool", "args", "bad", "hint"),
    [
        ("generate_image", {"prompt": "x", "widht": 512}, "widht", "width"),
        ("generate_image", {"prompt": "x", "sede": 5}, "sede", "seed"),
        ("edit_image", {"image": "0123456789ab", "prompt": "x", "strenght": 0.9}, "strenght", "strength"),
        ("get_job", {"job_id": "abc", "wait_secs": 1}, "wait_secs", "wait_seconds"),
    ],
)
async def test_unknown_argument_names_are_refused(
    settings: Settings, mode: str, tool: str, args: dict[str, Any], bad: str, hint: str
) -> None:
    async with Client(build_server(settings), mode=mode) as client:
        result = await client.call_tool(tool, args)
        text = result_text(result)
        assert result.is_error, text
        assert bad in text and f"did you mean '{hint}'" in text and "Valid arguments:" in text and hint in text
        assert (await client.call_tool("list_models", {})).is_error is False


async def test_a_tool_without_arguments_says_so(settings: Settings, mode: str) -> None:
    async with Client(build_server(settings), mode=mode) as client:
        result = await client.call_tool("list_models", {"verbose": True})
    assert result.is_error and "list_models takes no arguments" in result_text(result), result_text(result)


async def test_schemas_forbid_additional_properties(settings: Settings, mode: str) -> None:
    async with Client(build_server(settings), mode=mode) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert all(t.input_schema.get("additionalProperties") is False for t in tools.values())
    defs = tools["edit_image"].input_schema["$defs"]
    assert defs["LoraChoice"]["additionalProperties"] is False and defs["ControlInput"]["additionalProperties"] is False


async def test_unknown_nested_name_is_named(settings: Settings) -> None:
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("generate_image", {"prompt": "x", "loras": [{"name": "a", "scael": 1.0}]})
    text = result_text(result)
    assert result.is_error and "loras[0].scael: unknown name (did you mean 'scale'?)" in text, text


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            {"width": "big"},
            "width: must be a valid integer (a multiple of 16 within the variant's limits, "
            'typically 256 to 2048), got "big"',
        ),
        (
            {"loras": [{"name": "a", "scale": "hi"}]},
            'loras[0].scale: must be a valid number (adapter strength, usually 0.5-1.2), got "hi"',
        ),
        ({"output_format": "gif"}, "output_format: must be one of 'png', 'webp' or 'jpeg', got \"gif\""),
        ({"seed": -1}, "seed: must be greater than or equal to 0"),
        ({"count": 9}, "count: must be less than or equal to 4"),
    ],
)
async def test_validation_errors_are_one_plain_sentence_per_field(
    settings: Settings, mode: str, args: dict[str, Any], line: str
) -> None:
    async with Client(build_server(settings), mode=mode) as client:
        result = await client.call_tool("generate_image", {"prompt": "x", **args})
    text = result_text(result)
    assert result.is_error and line in text, text
    for internal in ("pydantic", "https://", "type=", "validation error for", "Arguments", "input_value"):
        assert internal not in text, text


async def test_errors_never_echo_whole_inputs(settings: Settings) -> None:
    huge = "A" * 100_000
    async with Client(build_server(settings)) as client:
        results = [
            await client.call_tool("generate_image", {"prompt": huge}),
            await client.call_tool("generate_image", {"prompt": "x", "width": huge}),
            await client.call_tool("edit_image", {"image": huge, "prompt": "x"}),
            await client.call_tool("edit_image", {"image": "/nope/" + "B" * 3000, "prompt": "x"}),
            await client.call_tool("get_job", {"job_id": huge}),
            await client.call_tool("generate_image", {"prompt": "x", "Z" * 5000: 1}),
        ]
    for result in results:
        text = result_text(result)
        assert result.is_error and len(text) < 2000, text[:300]
        assert "A" * 250 not in text and "B" * 250 not in text and "Z" * 250 not in text


@pytest.mark.parametrize(
    "prompt",
    [
        "\u200b",
        "\u200b\u200c\u200d",
        "\u2060 \ufeff",
        "\u202a\u202e\u2066\u2069",
        "\u00a0\u3000",
        "\x00\x07 \t\n",
        "\u200e\u200f\u061c",
    ],
)
async def test_invisible_prompts_are_empty(settings: Settings, prompt: str) -> None:
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("generate_image", {"prompt": prompt, **SMALL})
        text = result_text(result)
        assert result.is_error and text.startswith("Error executing tool generate_image: prompt: must not be empty")
        made = await client.call_tool(
            "generate_image", {"prompt": "a cat", "negative_prompt": "\u200b\u202e", "wait": False, **SMALL}
        )
        assert not made.is_error and made.structured_content["negative_prompt"] == ""
        emoji = await client.call_tool(
            "generate_image", {"prompt": "\U0001f468\u200d\U0001f469", "wait": False, **SMALL}
        )
        assert not emoji.is_error and emoji.structured_content["prompt"] == "\U0001f468\u200d\U0001f469"


@pytest.fixture
def lora_settings(tmp_path: Path, registry_file: Path, input_dir: Path) -> Settings:  # noqa: F811
    import torch
    from safetensors.torch import save_file

    loras = tmp_path / "loras"
    loras.mkdir()
    gen = torch.Generator().manual_seed(0)
    sd = {}
    for t in ("to_q", "to_k"):
        sd[f"transformer.layers.0.attention.{t}.lora_A.weight"] = torch.randn(4, 64, generator=gen)
        sd[f"transformer.layers.0.attention.{t}.lora_B.weight"] = torch.randn(64, 4, generator=gen)
    save_file(sd, str(loras / "style.safetensors"))
    (loras / "style.toml").write_text("scale = 0.8\n")
    return make_settings(tmp_path, registry_file, input_dir, lora_dir=loras)


async def test_lora_variant_is_recorded_in_loras(lora_settings: Settings, mode: str) -> None:
    async with Client(build_server(lora_settings), mode=mode) as client:
        result = await client.call_tool("generate_image", {"prompt": "a tree", "model": "lora:style", **SMALL})
        assert not result.is_error, result_text(result)
        assert result.structured_content["loras"] == [{"name": "style", "scale": 0.8}]
        image_id = result.structured_content["images"][0]["id"]
        meta = json.loads((await client.read_resource(f"zimage://images/{image_id}/metadata")).contents[0].text)
    assert meta["loras"] == [{"name": "style", "scale": 0.8}]


@pytest.mark.parametrize(("extra", "field"), [({"strength": 0.5}, "strength"), ({"mask": "m.png"}, "mask")])
async def test_edit_variant_refuses_mask_and_strength(
    settings: Settings, input_dir: Path, mode: str, extra: dict[str, Any], field: str
) -> None:
    source = input_dir / "src.png"
    Image.new("RGB", (256, 256), (10, 200, 10)).save(source)
    if "mask" in extra:
        Image.new("L", (256, 256), 255).save(input_dir / "m.png")
        extra = {"mask": str(input_dir / "m.png")}
    async with Client(build_server(settings), mode=mode) as client:
        result = await client.call_tool(
            "edit_image", {"image": str(source), "prompt": "make it blue", "model": "z-image-edit", **extra}
        )
    text = result_text(result)
    assert result.is_error and f"{field}:" in text and "z-image-edit" in text and "reference" in text, text
    assert "reference_images" in text  # what the variant does take


async def test_cancel_job_says_what_happened(settings: Settings, mode: str) -> None:
    async with Client(build_server(settings), mode=mode) as client:
        slow = await client.call_tool("generate_image", {"prompt": "a", "wait": False, **{**SMALL, "steps": 50}})
        job_id = slow.structured_content["job_id"]
        cancelled = await client.call_tool("cancel_job", {"job_id": job_id})
        text = result_text(cancelled)
        assert cancelled.structured_content["status"] == "cancelled", text
        assert cancelled.structured_content["cancel"] == "cancelled"
        assert "nothing more will come" in text and "poll" not in text
        again = await client.call_tool("cancel_job", {"job_id": job_id})
        assert again.structured_content["cancel"] == "already finished" and "poll" not in result_text(again)
        done = await client.call_tool("generate_image", {"prompt": "a", **SMALL})
        assert not done.is_error, result_text(done)
        finished = await client.call_tool("cancel_job", {"job_id": done.structured_content["job_id"]})
        text = result_text(finished)
        assert not finished.is_error and finished.structured_content["cancel"] == "already finished"
        assert finished.structured_content["images"] and "already finished" in text and "poll" not in text
        unknown = await client.call_tool("cancel_job", {"job_id": "ffffffffffff"})
        assert unknown.is_error and "no job" in result_text(unknown) and "nothing to cancel" in result_text(unknown)


async def test_unknown_tool_is_a_protocol_error(settings: Settings, mode: str) -> None:
    async with Client(build_server(settings), mode=mode) as client:
        with pytest.raises(MCPError) as caught:
            await client.call_tool("generate_imgae", {"prompt": "x"})
        assert caught.value.error.code == -32602
        assert "generate_image" in caught.value.error.message
        assert not (await client.call_tool("list_models", {})).is_error


async def test_a_huge_resource_uri_is_not_echoed_back(settings: Settings, mode: str) -> None:
    uri = "zimage://images/" + "a" * 100_000
    async with Client(build_server(settings), mode=mode) as client:
        with pytest.raises(MCPError) as caught:
            await client.read_resource(uri)
        assert (await client.call_tool("list_models", {})).is_error is False  # still serving
    error = caught.value
    assert error.code == -32602
    assert len(str(error)) < 600 and len(str(getattr(error, "data", ""))) < 600, (len(str(error)), str(error)[:200])
