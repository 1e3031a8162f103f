"""Full-size parity on a GPU: our DiT, VAE, text encoder, ControlNet and Omni forward against diffusers' on the
same random bf16 weights.

    python benchmarks/parity_full.py            # H100/H200: 6.15 B DiT at 1024^2, VAE decode at 1024^2
    python benchmarks/parity_full.py --tiny     # CPU smoke run (what CI exercises)
Prints one JSON line per check: relative error ||ours - ref|| / ||ref|| and max abs.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from components import build  # noqa: E402


def rel(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    a, b = a.float(), b.float()
    return {
        "rel_err": float((a - b).norm() / b.norm()),
        "max_abs": float((a - b).abs().max()),
        "ref_rms": float(b.pow(2).mean().sqrt()),
    }


@torch.inference_mode()
def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--size", type=int, default=1024)
    args = ap.parse_args(argv)
    device = "cpu" if args.tiny else "cuda"
    dtype = torch.float32 if args.tiny else torch.bfloat16
    c = build(args.tiny, device, dtype)
    size = 256 if args.tiny else args.size
    gen = torch.Generator("cpu").manual_seed(0)
    results = []
    cap_dim = c.ours.transformer.cfg.cap_feat_dim
    for caps in ([77], [100, 37]):
        b = len(caps)
        x = torch.randn(b, 16, size // 8, size // 8, generator=gen).to(c.device, dtype)
        t = torch.rand(b, generator=gen).to(c.device)
        feats = [torch.randn(n, cap_dim, generator=gen).to(c.device, dtype) for n in caps]
        ref = torch.stack(c.ref.transformer([xi.unsqueeze(1) for xi in x], t, feats, return_dict=False)[0]).squeeze(2)
        ours = c.ours.transformer(x, t, feats)
        results.append({"check": f"dit_forward_{size}px_captions_{caps}", **rel(ours, ref)})
    z = torch.randn(1, 16, size // 8, size // 8, generator=gen).to(c.device, c.ours.vae_dtype)
    results.append({"check": f"vae_decode_{size}px", **rel(c.ours.vae.decode(z), c.ref.vae.decode(z).sample)})
    img = torch.rand(1, 3, size, size, generator=gen).to(c.device, c.ours.vae_dtype) * 2 - 1
    mean, _ = c.ours.vae.encode(img)
    results.append({"check": f"vae_encode_mean_{size}px", **rel(mean, c.ref.vae.encode(img).latent_dist.mean)})
    results.append(text_encoder_check(c))
    results.append(controlnet_check(c, size, gen))
    results.append(omni_check(c, size, gen))
    for r in results:
        print(json.dumps(r))
    return results


def text_encoder_check(c) -> dict:
    """Our Qwen3 decoder and tokenizer (no transformers) against diffusers' ``encode_prompt`` (transformers'
    Qwen3Model, hidden_states[-2]) on the same weights: the real tokens of a prompt, batched with a shorter one."""
    prompts = ["a lighthouse on a cliff at dusk, waves breaking below, oil painting", "a cat"]
    # a copy: diffusers writes the chat-templated prompts back into the list it is given
    ref = c.ref.encode_prompt(list(prompts), device=c.device, do_classifier_free_guidance=False)[0]
    ours = c.ours.text_encoder.encode(prompts)
    assert [tuple(o.shape) for o in ours] == [tuple(r.shape) for r in ref], "token counts differ"
    result = {"check": "text_encoder_features_2_prompts", **rel(torch.cat(ours), torch.cat(ref))}
    if c.dtype != torch.float32:  # how far each bf16 run is from the same encoder in fp32: the rounding's share
        bf16 = c.ref.text_encoder
        c.ref.text_encoder = copy.deepcopy(bf16).float()
        fp32 = torch.cat(c.ref.encode_prompt(list(prompts), device=c.device, do_classifier_free_guidance=False)[0])
        c.ref.text_encoder = bf16
        result["ours_vs_fp32_rel_err"] = rel(torch.cat(ours), fp32)["rel_err"]
        result["ref_vs_fp32_rel_err"] = rel(torch.cat(ref), fp32)["rel_err"]
    return result


def controlnet_check(c, size: int, gen: torch.Generator) -> dict:
    """ControlNet-Union 2.1 (15 control layers + 2 control refiners at full size) on the shared base DiT."""
    from diffusers import ZImageControlNetModel

    from zimage_mcp.engine.dit.controlnet import ControlNetConfig, ZImageControlNet, controlled_forward
    from zimage_mcp.engine.presets.tiny_controlnet import tiny_controlnet_config

    base_cfg = c.ours.transformer.cfg
    if c.tiny:
        ccfg = tiny_controlnet_config("2.1")
    else:
        ccfg = ControlNetConfig(
            control_layers_places=tuple(range(0, 30, 2)),
            control_refiner_layers_places=(0, 1),
            control_in_dim=33,
            add_control_noise_refiner="control_noise_refiner",
            dim=base_cfg.dim,
            n_refiner_layers=2,
            n_heads=base_cfg.n_heads,
            n_kv_heads=base_cfg.n_kv_heads,
            norm_eps=base_cfg.norm_eps,
            qk_norm=True,
        )
    kwargs = {k: v for k, v in ccfg.to_json_dict().items() if not k.startswith("_")}
    with torch.device(c.device):
        ref_cn = ZImageControlNetModel(**kwargs).to(c.dtype).eval()
    from components import _init_

    _init_(ref_cn, seed=7)
    own = {k: v for k, v in ref_cn.state_dict().items() if k.startswith("control_")}
    ref_cn = ZImageControlNetModel.from_transformer(ref_cn, c.ref.transformer)
    with torch.device("meta"):
        ours_cn = ZImageControlNet(ccfg)
    ours_cn.load_state_dict(own, strict=True, assign=True)
    ours_cn.eval()
    cap_dim = base_cfg.cap_feat_dim
    x = torch.randn(1, 16, size // 8, size // 8, generator=gen).to(c.device, c.dtype)
    control = torch.randn(1, 33, size // 8, size // 8, generator=gen).to(c.device, c.dtype)
    t = torch.full((1,), 0.4, device=c.device)
    feats = [torch.randn(77, cap_dim, generator=gen).to(c.device, c.dtype)]
    hints = ref_cn([x[0].unsqueeze(1)], t, feats, [control[0].unsqueeze(1)], conditioning_scale=0.75)
    ref = c.ref.transformer([x[0].unsqueeze(1)], t, feats, controlnet_block_samples=hints, return_dict=False)[0][0]
    cond = c.ours.transformer.prepare(feats, (size // 8, size // 8))
    ours = controlled_forward(c.ours.transformer, ours_cn, x, t, cond, control, 0.75)
    out = {"check": f"controlnet_2.1_forward_{size}px", **rel(ours[0], ref.squeeze(1))}
    del ref_cn, ours_cn
    return out


def omni_check(c, size: int, gen: torch.Generator) -> dict:
    """The omni forward (1 condition image + SigLIP tokens + target) on a DiT with siglip_feat_dim set."""
    from components import _init_
    from diffusers import ZImageTransformer2DModel

    from zimage_mcp.engine.config import replace
    from zimage_mcp.engine.dit.omni_transformer import ZImageOmniTransformer

    cfg = replace(c.ours.transformer.cfg, siglip_feat_dim=32 if c.tiny else 1152)
    kwargs = {k: v for k, v in cfg.to_json_dict().items() if not k.startswith("_")}
    with torch.device(c.device):
        ref = ZImageTransformer2DModel(**kwargs).to(c.dtype).eval()
    _init_(ref, seed=11)
    with torch.device("meta"):
        ours = ZImageOmniTransformer(cfg)
    ours.load_state_dict(ref.state_dict(), strict=True, assign=True)
    ours.eval()
    lat = size // 8
    caps = [[torch.randn(n, cfg.cap_feat_dim, generator=gen).to(c.device, c.dtype) for n in (20, 9, 14)]]
    cond_img = torch.randn(16, lat, lat, generator=gen).to(c.device, c.dtype)
    sig = torch.randn(16, 16, cfg.siglip_feat_dim, generator=gen).to(c.device, c.dtype)
    x = torch.randn(1, 16, lat, lat, generator=gen).to(c.device, c.dtype)
    t = torch.full((1,), 0.3, device=c.device)
    want = ref(
        [[cond_img.unsqueeze(1), x[0].unsqueeze(1)]],
        t,
        caps,
        siglip_feats=[[sig, None]],
        image_noise_mask=[[0, 1]],
        return_dict=False,
    )[0][0].squeeze(1)
    got = ours.forward_omni(x, t, ours.prepare_omni(caps, [cond_img], [sig], (lat, lat)))[0]
    return {"check": f"omni_forward_{size}px_1_reference", **rel(got, want)}


if __name__ == "__main__":
    main()
