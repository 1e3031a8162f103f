"""Every edit path through a real MCP client, the real registry, the built-in plugins and the engine.

img2img and inpaint run on Turbo; ``control`` runs Turbo with a paired tiny ControlNet-Union 2.1;
``reference`` runs the Edit (Omni) variant on a tiny Omni checkpoint with a tiny SigLIP2.
"""

from __future__ import annotations

from pathlib import Path

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


@pytest.fixture
def server(tmp_path: Path, tiny_model_dir: Path, edit_models: tuple[Path, Path]):  # noqa: F811
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
""")
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    settings = make_settings(tmp_path, reg, inputs)
    return build_server(settings, Registry.from_settings(settings)), inputs, settings.output_dir


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
        res = await client.call_tool("edit_image", {
            "image": parent, "prompt": "the same street at night", "seed": 3,
            "control": {"type": "canny", "image": hint, "scale": 0.8},
        })
        assert not res.is_error, res.content
        info = res.structured_content
        assert info["mode"] == "control" and info["parent"] == parent
        plain = await client.call_tool("generate_image", {"prompt": "the same street at night", "seed": 3,
                                                          "width": 256, "height": 256})
        a = Image.open(info["images"][0]["path"])
        b = Image.open(plain.structured_content["images"][0]["path"])
        assert np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max() > 0  # the hint changed the image


@pytest.mark.anyio
async def test_unsupported_hint_type_is_a_clear_error(server) -> None:
    srv, inputs, out = server
    hint = _gradient(inputs / "hint.png")
    async with Client(srv) as client:
        parent = await _first_id(client)
        res = await client.call_tool("edit_image", {"image": parent, "prompt": "x",
                                                    "control": {"type": "thermal", "image": hint}})
        assert res.is_error and "thermal" in res.content[0].text


@pytest.mark.anyio
async def test_reference_edit_runs_the_omni_variant(server) -> None:
    srv, inputs, out = server
    ref = _gradient(inputs / "ref.png")
    async with Client(srv) as client:
        parent = await _first_id(client)
        res = await client.call_tool("edit_image", {"image": parent, "instruction": "put the square on a table",
                                                    "model": "edit", "reference_images": [ref], "seed": 5})
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
        res = await client.call_tool("edit_image", {"image": parent, "prompt": "a red door", "seed": 2,
                                                    "mask": str(inputs / "mask.png")})
        assert not res.is_error, res.content
        src = np.asarray(Image.open(next(Path(out).rglob(f"{parent}.png"))))
        out = np.asarray(Image.open(res.structured_content["images"][0]["path"]))
        keep = np.ones((256, 256), bool)
        keep[48:144, 48:144] = False  # away from the repainted square
        assert np.array_equal(out[keep], src[keep])
