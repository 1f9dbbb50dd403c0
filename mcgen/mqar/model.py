"""A small language model for MQAR: embedding, n pre-norm blocks (mixer, MLP), tied output.

The sequence mixer is whatever `mixer_factory(layer_idx)` returns: a module mapping
x [B, T, d] to [B, T, d] (the Zoology mixer contract). `attention_mixer` gives the
softmax-attention baseline, `mcgen_mixer` a generated package's MCLayer.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

from mcgen.packages import import_package

MixerFactory = Callable[[int], nn.Module]

# Width of the causal convolution in front of each mixer. Token-wise projections cannot
# tell a value which key came just before it; without that, rotary attention stayed
# at 1/num_pairs (a guess among the values present) for 1500 steps of a tiny MQAR, and
# a recurrent memory has no other source of order. Zoology puts a short convolution
# (BaseConv, width 3) in front of every mixer it compares, attention included.
SHORT_CONV = 3


class MLP(nn.Module):
    def __init__(self, d_model: int, ratio: int = 4):
        super().__init__()
        self.up = nn.Linear(d_model, ratio * d_model)
        self.down = nn.Linear(ratio * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    def __init__(self, d_model: int, mixer: nn.Module, mlp_ratio: int = 4):
        super().__init__()
        self.mixer_norm = nn.LayerNorm(d_model)
        self.mixer = mixer
        self.mlp_norm = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mixer(self.mixer_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class MQARModel(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        layers: int,
        mixer_factory: MixerFactory,
        *,
        mlp_ratio: int = 4,
    ):
        super().__init__()
        self.vocab_size, self.d_model = vocab_size, d_model
        self.embedding = nn.Embedding(vocab_size, d_model)
        # A small init: the same matrix makes the logits, and N(0, 1) rows would start
        # them at a scale of sqrt(d_model).
        nn.init.normal_(self.embedding.weight, std=0.02)
        self.blocks = nn.ModuleList(
            Block(d_model, mixer_factory(i), mlp_ratio) for i in range(layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.head.weight = self.embedding.weight  # tied

    def forward(self, input_ids: torch.Tensor, where: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [B, T] -> logits [B, T, vocab_size]; with a bool mask `where` [B, T],
        the logits of the masked positions only, [N, vocab_size] (MQAR scores only the
        queries, and the output matrix is most of the cost at a large vocabulary)."""
        x = self.embedding(input_ids)
        for block in self.blocks:
            x = block(x)
        if where is not None:
            x = x[where]
        return self.head(self.norm(x))


class ShortConv(nn.Module):
    """A causal depthwise convolution over time, [B, T, d] -> [B, T, d]."""

    def __init__(self, d_model: int, kernel_size: int):
        super().__init__()
        self.kernel_size = kernel_size
        self.conv = nn.Conv1d(d_model, d_model, kernel_size, groups=d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x.transpose(1, 2), (self.kernel_size - 1, 0))  # left only: causal
        return self.conv(x).transpose(1, 2)


def _with_short_conv(mixer: nn.Module, d_model: int, short_conv: int) -> nn.Module:
    return nn.Sequential(ShortConv(d_model, short_conv), mixer) if short_conv > 0 else mixer


def _rotary(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding of x [B, H, T, D] (D even), rotate-half convention."""
    _, _, length, dim = x.shape
    inv_freq = base ** (-torch.arange(0, dim, 2, device=x.device, dtype=torch.float32) / dim)
    angles = torch.arange(length, device=x.device, dtype=torch.float32)[:, None] * inv_freq
    cos = torch.cat([angles.cos(), angles.cos()], dim=-1).to(x.dtype)
    sin = torch.cat([angles.sin(), angles.sin()], dim=-1).to(x.dtype)
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


class CausalSelfAttention(nn.Module):
    """Causal softmax attention with rotary positions (relative, so longer test
    sequences than training ones still mean something)."""

    def __init__(self, d_model: int, heads: int, *, rotary: bool = True):
        super().__init__()
        if d_model % heads or (rotary and (d_model // heads) % 2):
            raise ValueError(f"d_model {d_model} must split into {heads} heads of even size")
        self.heads, self.rotary = heads, rotary
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, d_model = x.shape
        qkv = self.qkv(x).view(batch, length, 3, self.heads, d_model // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, T, D]
        if self.rotary:
            q, k = _rotary(q), _rotary(k)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(o.transpose(1, 2).reshape(batch, length, d_model))


def attention_mixer(
    d_model: int, heads: int, *, rotary: bool = True, short_conv: int = SHORT_CONV
) -> MixerFactory:
    """The softmax-attention baseline, behind a causal convolution of width short_conv
    (0: none)."""

    def factory(layer_idx: int) -> nn.Module:
        return _with_short_conv(
            CausalSelfAttention(d_model, heads, rotary=rotary), d_model, short_conv
        )

    return factory


def mcgen_mixer(
    package: ModuleType | str | os.PathLike[str],
    *,
    short_conv: int = SHORT_CONV,
    **kwargs: object,
) -> MixerFactory:
    """A generated package's MCLayer as the mixer, behind a causal convolution of width
    short_conv (0: none). `package` is the imported package or its directory; kwargs go
    to MCLayer (d_model, heads, key_dim, value_dim, backend)."""
    module = package if isinstance(package, ModuleType) else import_package(Path(package))

    def factory(layer_idx: int) -> nn.Module:
        layer = module.MCLayer(layer_idx=layer_idx, **kwargs)
        return _with_short_conv(layer, layer.d_model, short_conv)

    return factory


def parameter_count(model: nn.Module) -> int:
    """Distinct parameters (the tied matrix once)."""
    return sum(p.numel() for p in model.parameters())
