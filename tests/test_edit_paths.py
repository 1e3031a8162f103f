"""Every edit path through a real MCP client, the real registry, the built-in plugins and the engine.

img2img and inpaint run on Turbo; ``control`` (and ``photo-canny``) runs Turbo with a paired tiny
ControlNet-Union 2.1; ``reference`` runs the Edit (Omni) variant on a tiny Omni checkpoint with a tiny
SigLIP2. Also through the server on the real engine: edits a variant does not support, Omni with
count > 1 and with a LoRA, the VRAM-budget eviction and the idle unloader. No test here skips: a mode
that reports "not available in the engine yet" fails.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import numpy as np
import pytest
from mcp import Client
from PIL import Image

from tests.server_fixtures import anyio_backend, make_settings, tiny_model_dir  # noqa: F401
from zimage_mcp.registry import Registry
from zimage_mcp.server import build_server


@pytest.fixture(scope="module")
def edit_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from zimage_mcp.engine.presets.tiny_controlnet import make_tiny_controlnet
    from zimage_mcp.engine.presets.tiny_omni import make_tiny_omni

    root = tmp_path_factory.mktemp("edit-models")
    return make_tiny_controlnet(root / "controlnet", release="2.1"), make_tiny_omni(root / "omni")


def _registry(tmp_path: Path, tiny_model_dir: Path, edit_models: tuple[Path, Path]) -> Path:  # noqa: F811
    controlnet, omni = edit_models
    reg = tmp_path / "registry.toml"
    reg.write_text(f"""
[variants.z-image-turbo.weights]
path = "{tiny_model_dir.as_posix()}"
controlnet = "{controlnet.as_posix()}"
[variants.z-image-turbo.defaults]
steps = 2
[variants.z-image-turbo.capabilities]
control = true
[variants.z-image-edit.weights]
path = "{omni.as_posix()}"
[variants.z-image-edit.defaults]
steps = 2
guidance = 2.0
[variants.z-image-edit.limits]
max_count = 4
""")
    return reg


def _server(tmp_path: Path, tiny_model_dir: Path, edit_models: tuple[Path, Path], **overrides: object):  # noqa: F811
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    settings = make_settings(tmp_path, _registry(tmp_path, tiny_model_dir, edit_models), inputs, **overrides)
    return build_server(settings, Registry.from_settings(settings)), inputs, settings.output_dir


@pytest.fixture
def server(tmp_path: Path, tiny_model_dir: Path, edit_models: tuple[Path, Path]):  # noqa: F811
    return _server(tmp_path, tiny_model_dir, edit_models)


def _gradient(path: Path) -> str:
    arr = np.zeros((256, 256, 3), np.uint8)
    arr[..., 0] = np.linspace(0, 255, 256, dtype=np.uint8)[None, :]
    arr[96:160, 96:160] = 255  # a square: gives edges for the hint
    Image.fromarray(arr).save(path)
    return str(path)


async def _first_id(client: Client) -> str:
    res = await client.call_tool("generate_image", {"prompt": "a quiet street", "width": 256, "height": 256, "seed": 1})
    assert not res.is_error, res.content
    return res.structured_content["images"][0]["id"]


@pytest.mark.anyio
async def test_control_edit_runs_the_paired_controlnet(server) -> None:
    srv, inputs, out = server
    hint = _gradient(inputs / "hint.png")
    async with Client(srv) as client:
        parent = await _first_id(client)
        res = await client.call_tool(
            "edit_image",
            {
                "image": parent,
                "prompt": "the same street at night",
                "seed": 3,
                "control": {"type": "canny", "image": hint, "scale": 0.8},
            },
        )
        assert not res.is_error, res.content
        info = res.structured_content
        assert info["mode"] == "control" and info["parent"] == parent
        plain = await client.call_tool(
            "generate_image", {"prompt": "the same street at night", "seed": 3, "width": 256, "height": 256}
        )
        a = Image.open(info["images"][0]["path"])
        b = Image.open(plain.structured_content["images"][0]["path"])
        assert np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max() > 0  # the hint changed the image


@pytest.mark.anyio
async def test_unsupported_hint_type_is_a_clear_error(server) -> None:
    srv, inputs, out = server
    hint = _gradient(inputs / "hint.png")
    async with Client(srv) as client:
        parent = await _first_id(client)
        res = await client.call_tool(
            "edit_image", {"image": parent, "prompt": "x", "control": {"type": "thermal", "image": hint}}
        )
        assert res.is_error and "thermal" in res.content[0].text


@pytest.mark.anyio
async def test_reference_edit_runs_the_omni_variant(server) -> None:
    srv, inputs, out = server
    ref = _gradient(inputs / "ref.png")
    async with Client(srv) as client:
        parent = await _first_id(client)
        res = await client.call_tool(
            "edit_image",
            {
                "image": parent,
                "instruction": "put the square on a table",
                "model": "edit",
                "reference_images": [ref],
                "seed": 5,
            },
        )
        assert not res.is_error, res.content
        info = res.structured_content
        assert info["mode"] == "reference" and info["model"] == "z-image-edit" and info["parent"] == parent
        assert Image.open(info["images"][0]["path"]).size == (256, 256)


@pytest.mark.anyio
async def test_inpaint_keeps_unmasked_pixels(server) -> None:
    srv, inputs, out = server
    mask = np.zeros((256, 256), np.uint8)
    mask[64:128, 64:128] = 255
    Image.fromarray(mask).save(inputs / "mask.png")
    async with Client(srv) as client:
        parent = await _first_id(client)
        res = await client.call_tool(
            "edit_image", {"image": parent, "prompt": "a red door", "seed": 2, "mask": str(inputs / "mask.png")}
        )
        assert not res.is_error, res.content
        src = np.asarray(Image.open(next(Path(out).rglob(f"{parent}.png"))))
        out = np.asarray(Image.open(res.structured_content["images"][0]["path"]))
        keep = np.ones((256, 256), bool)
        keep[48:144, 48:144] = False  # away from the repainted square
        assert np.array_equal(out[keep], src[keep])


def _ok(res) -> dict:  # type: ignore[no-untyped-def]
    text = "\n".join(getattr(b, "text", "") for b in res.content)
    assert not res.is_error, text
    assert "not available in the engine yet" not in text
    return res.structured_content


def _error(res) -> str:  # type: ignore[no-untyped-def]
    assert res.is_error, res.structured_content
    return "\n".join(getattr(b, "text", "") for b in res.content)


async def _loaded(client: Client) -> dict[str, bool]:
    listed = _ok(await client.call_tool("list_models", {}))
    return {v["id"]: v["loaded"] for v in listed["variants"] if v["installed"]}


@pytest.mark.anyio
async def test_img2img_runs_in_the_engine(server) -> None:
    srv, inputs, out = server
    async with Client(srv) as client:
        parent = await _first_id(client)
        info = _ok(
            await client.call_tool(
                "edit_image", {"image": parent, "instruction": "make it blue", "strength": 0.5, "seed": 7}
            )
        )
        assert info["mode"] == "img2img" and info["parent"] == parent and info["edit"]["strength"] == 0.5
        src = np.asarray(Image.open(next(Path(out).rglob(f"{parent}.png"))), np.int16)
        got = np.asarray(Image.open(info["images"][0]["path"]), np.int16)
        assert got.shape == src.shape and np.abs(got - src).max() > 0  # the engine repainted it


@pytest.mark.anyio
async def test_photo_canny_detects_edges_in_the_engine(server) -> None:
    srv, inputs, out = server
    photo = _gradient(inputs / "photo.png")
    async with Client(srv) as client:
        parent = await _first_id(client)
        args = {"image": parent, "prompt": "the same street at night", "seed": 3}
        detected = _ok(
            await client.call_tool("edit_image", {**args, "control": {"type": "photo-canny", "image": photo}})
        )
        raw = _ok(await client.call_tool("edit_image", {**args, "control": {"type": "canny", "image": photo}}))
        assert detected["mode"] == raw["mode"] == "control"
        a = np.asarray(Image.open(detected["images"][0]["path"]), np.int16)
        b = np.asarray(Image.open(raw["images"][0]["path"]), np.int16)
        assert np.abs(a - b).max() > 0  # the photo went through edge detection first, not used as the hint


@pytest.mark.anyio
async def test_unsupported_edits_are_refused_by_name(server) -> None:
    srv, inputs, out = server
    mask = inputs / "mask.png"
    Image.new("L", (256, 256), 255).save(mask)
    async with Client(srv) as client:
        parent = await _first_id(client)
        for field, value in (("mask", str(mask)), ("strength", 0.5)):
            text = _error(
                await client.call_tool("edit_image", {"image": parent, "prompt": "x", "model": "edit", field: value})
            )
            assert f"{field}: variant 'z-image-edit' edits by instruction (edit modes: reference)" in text
        text = _error(
            await client.call_tool(
                "edit_image",
                {"image": parent, "prompt": "x", "model": "edit", "control": {"type": "canny", "image": parent}},
            )
        )
        assert "control" in text and "z-image-edit" in text
        assert _ok(await client.call_tool("list_models", {}))  # still serving


@pytest.mark.anyio
async def test_omni_generates_several_images_with_consecutive_seeds(server) -> None:
    srv, inputs, out = server
    async with Client(srv) as client:
        args = {"prompt": "a red boat", "model": "edit", "width": 256, "height": 256, "seed": 11}
        two = _ok(await client.call_tool("generate_image", {**args, "count": 2}))
        assert two["model"] == "z-image-edit" and [i["seed"] for i in two["images"]] == [11, 12]
        second = _ok(await client.call_tool("generate_image", {**args, "seed": 12}))
        a = np.asarray(Image.open(two["images"][1]["path"]), np.int16)
        b = np.asarray(Image.open(second["images"][0]["path"]), np.int16)
        assert np.abs(a - b).max() <= 2  # image i of a batch is the seed + i image (batched-matmul rounding)
        assert np.abs(a - np.asarray(Image.open(two["images"][0]["path"]), np.int16)).max() > 0


@pytest.mark.anyio
async def test_a_lora_changes_an_omni_edit(
    tmp_path: Path,
    tiny_model_dir: Path,  # noqa: F811
    edit_models: tuple[Path, Path],
) -> None:
    from tests.engine.lora_dialects import write_peft_lora

    (tmp_path / "loras").mkdir()
    write_peft_lora(tmp_path / "loras", name="sharpen.safetensors")
    srv, inputs, out = _server(tmp_path, tiny_model_dir, edit_models)
    ref = _gradient(inputs / "ref.png")
    async with Client(srv) as client:
        parent = await _first_id(client)
        args = {
            "image": parent,
            "instruction": "put the square on a table",
            "model": "edit",
            "reference_images": [ref],
            "seed": 5,
        }
        plain = _ok(await client.call_tool("edit_image", args))
        styled = _ok(await client.call_tool("edit_image", {**args, "loras": [{"name": "sharpen", "scale": 1.0}]}))
        again = _ok(await client.call_tool("edit_image", args))  # the LoRA comes off after its request
        assert styled["mode"] == "reference" and [lora["name"] for lora in styled["loras"]] == ["sharpen"]
        px = [np.asarray(Image.open(r["images"][0]["path"]), np.int16) for r in (plain, styled, again)]
        assert np.abs(px[0] - px[1]).max() > 0 and np.array_equal(px[0], px[2])


@pytest.mark.anyio
async def test_vram_budget_evicts_the_least_recently_used_variant(
    tmp_path: Path,
    tiny_model_dir: Path,  # noqa: F811
    edit_models: tuple[Path, Path],
) -> None:
    # a budget below either tiny model: loading one variant unloads the other
    srv, inputs, out = _server(tmp_path, tiny_model_dir, edit_models, vram_budget_gb=1e-6)
    ref = _gradient(inputs / "ref.png")
    async with Client(srv) as client:
        parent = await _first_id(client)
        assert (await _loaded(client))["z-image-turbo"] is True
        _ok(
            await client.call_tool(
                "edit_image",
                {"image": parent, "instruction": "x", "model": "edit", "reference_images": [ref], "seed": 1},
            )
        )
        assert await _loaded(client) == {"z-image-turbo": False, "z-image-edit": True}
        await _first_id(client)  # turbo again: loads, and the edit variant makes room
        assert await _loaded(client) == {"z-image-turbo": True, "z-image-edit": False}


@pytest.mark.anyio
async def test_idle_unloader_frees_the_model_and_a_later_request_reloads_it(
    tmp_path: Path,
    tiny_model_dir: Path,
    edit_models: tuple[Path, Path],  # noqa: F811
) -> None:
    srv, inputs, out = _server(tmp_path, tiny_model_dir, edit_models, idle_unload_seconds=0.2)
    async with Client(srv) as client:
        await _first_id(client)
        assert (await _loaded(client))["z-image-turbo"] is True
        with anyio.fail_after(60):  # a bound for a broken unloader, not a timing claim
            while (await _loaded(client))["z-image-turbo"]:
                await anyio.sleep(0.1)
        await _first_id(client)  # the next request loads it again
        assert (await _loaded(client))["z-image-turbo"] is True
