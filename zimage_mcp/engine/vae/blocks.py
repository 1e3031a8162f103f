"""Building blocks of the FLUX autoencoder; attribute names follow diffusers' ``AutoencoderKL`` keys."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

GN_EPS = 1e-6  # every GroupNorm of the FLUX VAE
# Uncompiled, a conv whose input is larger than this runs in bands of rows of about this many bytes.
BAND_BYTES = 32 * 2**20


def banded_conv(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``conv(x)`` for a stride-1 conv padded to keep its size (3x3 or 1x1 here); uncompiled and over a large
    input, in bands of rows.

    A server's first request decodes uncompiled, and there cuDNN's NCHW convs at the decoder's 1024^2 level
    take a workspace as large as their input (512 MiB at 256 channels), which set that request's memory peak
    beside the input, the norm's output and the conv's own output. A band of rows, with ``padding`` rows of
    halo each side, needs a workspace the band's size: on an H100 at 1024^2 the decode's peak fell from 2178 to
    1409 MiB over the weights, 26 ms slower, with identical pixels (RESULTS §17; other kernels may round
    differently). Compiled code (Inductor fuses its own way) takes the whole tensor. The encoder's convs (img2img
    at 1024^2) run in bands too.
    """
    b, c, h, w = x.shape
    band_rows = BAND_BYTES // max(1, b * c * w * x.element_size())
    if torch.compiler.is_compiling() or band_rows >= h:
        return conv(x)
    band_rows, halo = max(1, band_rows), conv.kernel_size[0] // 2
    out = x.new_empty(b, conv.out_channels, h, w)
    for top in range(0, h, band_rows):
        bottom = min(h, top + band_rows)
        # rows top-halo .. bottom+halo, zero rows where the image ends: (B, C, bottom - top + 2 * halo, W)
        rows = x[:, :, max(0, top - halo) : bottom + halo]
        band = F.pad(rows, (0, 0, max(0, halo - top), max(0, bottom + halo - h)))
        out[:, :, top:bottom] = F.conv2d(band, conv.weight, conv.bias, padding=(0, conv.padding[1]))
    return out


class ResnetBlock(nn.Module):
    """GN -> SiLU -> conv3x3 -> GN -> SiLU -> conv3x3, plus a (1x1) shortcut; no time embedding."""

    def __init__(self, in_ch: int, out_ch: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch, eps=GN_EPS)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_ch, eps=GN_EPS)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: Tensor) -> Tensor:
        # SiLU in place on the norm's fresh output: uncompiled (a first request), one full-size tensor fewer while
        # a resnet runs at the decoder's 1024^2 level; compiled, the same fused kernel. The convs run in bands
        # there (banded_conv): their workspace set the uncompiled decode's peak (benchmarks/probe_vae_memory.py).
        h = banded_conv(self.conv1, F.silu(self.norm1(x), inplace=True))
        h = banded_conv(self.conv2, F.silu(self.norm2(h), inplace=True))
        if self.conv_shortcut is not None:
            x = banded_conv(self.conv_shortcut, x)
        return x + h


class Attention(nn.Module):
    """Single-head self-attention over the H*W positions, with GroupNorm and a residual."""

    def __init__(self, ch: int, groups: int) -> None:
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, ch, eps=GN_EPS)
        self.to_q = nn.Linear(ch, ch)
        self.to_k = nn.Linear(ch, ch)
        self.to_v = nn.Linear(ch, ch)
        self.to_out = nn.ModuleList([nn.Linear(ch, ch)])  # key `to_out.0` (diffusers keeps a dropout at 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        t = self.group_norm(x).flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, HW, C)
        q, k, v = (proj(t).unsqueeze(1) for proj in (self.to_q, self.to_k, self.to_v))  # (B, 1, HW, C)
        t = F.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(c)).squeeze(1)
        t = self.to_out[0](t).transpose(1, 2).reshape(b, c, h, w)  # (B, HW, C) -> (B, C, H, W)
        return x + t


class Downsample(nn.Module):
    """3x3 stride-2 conv after padding one zero row/column at the right and bottom only."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # (B, C, H, W) -> (B, C, H/2, W/2)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        if x.numel() * 4 > 2**31:  # upsample_nearest_nhwc fails on very large outputs (pytorch#141831)
            x = x.contiguous()
        return banded_conv(self.conv, F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (B, C, 2H, 2W)


class DownBlock(nn.Module):
    """``DownEncoderBlock2D``: resnets, then an optional downsampler."""

    def __init__(self, in_ch: int, out_ch: int, n_layers: int, groups: int, downsample: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock(in_ch if i == 0 else out_ch, out_ch, groups) for i in range(n_layers)]
        )
        self.downsamplers = nn.ModuleList([Downsample(out_ch)] if downsample else [])

    def forward(self, x: Tensor) -> Tensor:
        for layer in [*self.resnets, *self.downsamplers]:
            x = layer(x)
        return x


class UpBlock(nn.Module):
    """``UpDecoderBlock2D``: resnets, then an optional upsampler."""

    def __init__(self, in_ch: int, out_ch: int, n_layers: int, groups: int, upsample: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock(in_ch if i == 0 else out_ch, out_ch, groups) for i in range(n_layers)]
        )
        self.upsamplers = nn.ModuleList([Upsample(out_ch)] if upsample else [])

    def layers(self) -> list[nn.Module]:
        return [*self.resnets, *self.upsamplers]

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers():
            x = layer(x)
        return x


class MidBlock(nn.Module):
    """``UNetMidBlock2D``: resnet -> (attention) -> resnet."""

    def __init__(self, ch: int, groups: int, add_attention: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(ch, ch, groups), ResnetBlock(ch, ch, groups)])
        self.attentions = nn.ModuleList([Attention(ch, groups)] if add_attention else [])

    def forward(self, x: Tensor) -> Tensor:
        x = self.resnets[0](x)
        for attn in self.attentions:
            x = attn(x)
        return self.resnets[1](x)


__all__ = ["banded_conv", "ResnetBlock", "Attention", "Downsample", "Upsample", "DownBlock", "UpBlock", "MidBlock"]
