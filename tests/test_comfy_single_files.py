"""ComfyUI single files through the real registry and tiny engine: what is missing is named; a full set generates."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.server_fixtures import make_settings, tiny_model_dir  # noqa: F401
from zimage_mcp.contract import GenerationRequest
from zimage_mcp.registry import Registry


def _registry(tmp_path: Path, weights: str) -> Registry:
    reg = tmp_path / "registry.toml"
    reg.write_text(f'[variants.z-image-turbo.weights]\nrepo_id = "org/not-cached"\n{weights}\n')
    inputs = tmp_path / "inputs"
    inputs.mkdir(exist_ok=True)
    return Registry.from_settings(make_settings(tmp_path, reg, inputs, hf_home=str(tmp_path / "hf")))


def test_a_dit_file_alone_is_not_installed_and_says_which_parts_are_missing(
    tmp_path: Path,
    tiny_model_dir: Path,  # noqa: F811
) -> None:
    dit = tiny_model_dir / "comfy" / "diffusion_models" / "z_image_tiny.safetensors"
    status = _registry(tmp_path, f'single_file = "{dit.as_posix()}"').install_status("turbo")
    assert not status.installed and status.source == "missing"
    assert "single_file is set but vae_file is not: ComfyUI's ae.safetensors" in status.how_to_install
    assert "single_file is set but text_encoder_file is not" in status.how_to_install
    assert "hf download org/not-cached --include 'model_index.json' 'tokenizer/*'" in status.how_to_install


def test_a_full_comfy_set_with_a_tokenizer_folder_generates(tmp_path: Path, tiny_model_dir: Path) -> None:  # noqa: F811
    comfy = tiny_model_dir / "comfy"
    side = tmp_path / "tokenizer-only"  # what `hf download ... --include tokenizer/* scheduler/*` leaves
    for part in ("tokenizer", "scheduler"):
        shutil.copytree(tiny_model_dir / part, side / part)
    (side / "vae").mkdir()  # the tiny VAE is not the Flux size: its config must come along (real files need none)
    shutil.copy(tiny_model_dir / "vae" / "config.json", side / "vae" / "config.json")
    registry = _registry(
        tmp_path,
        f"""path = "{side.as_posix()}"
single_file = "{(comfy / "diffusion_models" / "z_image_tiny.safetensors").as_posix()}"
vae_file = "{(comfy / "vae" / "ae.safetensors").as_posix()}"
text_encoder_file = "{(comfy / "text_encoders" / "qwen_3_tiny.safetensors").as_posix()}"
""",
    )
    status = registry.install_status("turbo")
    assert (status.installed, status.source, status.folder) == (True, "single_file", str(side))
    backend = registry.backend("turbo")
    request = GenerationRequest(
        prompt="a lighthouse", negative_prompt="", width=256, height=256, steps=2, guidance=0.0, seed=3
    )
    result = backend.generate(request, lambda *a: None, lambda: False)
    assert result.images and (result.width, result.height) == (256, 256)
    backend.unload()


def test_a_vae_file_alone_overrides_the_folders_vae(tmp_path: Path, tiny_model_dir: Path) -> None:  # noqa: F811
    vae = tiny_model_dir / "comfy" / "vae" / "ae.safetensors"
    status = _registry(tmp_path, f'path = "{tiny_model_dir.as_posix()}"\nvae_file = "{vae.as_posix()}"').install_status(
        "turbo"
    )
    assert (status.installed, status.source, status.folder) == (True, "single_file", str(tiny_model_dir))
