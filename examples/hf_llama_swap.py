"""Replace the attention of a Hugging Face Llama with exported memory-caching layers.

    mcgen export specs/grm.yaml --out my_grm        # the layer, as a standalone project
    pip install transformers                        # >= 5.24
    python examples/hf_llama_swap.py my_grm         # build, swap, train, generate

A small Llama-style model is built from scratch (no download); every decoder layer's
self-attention becomes the exported package's MCLayer, behind a wrapper that speaks the
attention module's calling convention. The model then trains a few steps on counting
sequences (each token the previous one + 1) and continues a prompt greedily.

The wrapper gives the layer no cache, so generation here recomputes the prefix at each
step (use_cache=False), and batches must not be padded (Llama hands its attention a 4-D
mask, which the wrapper ignores). For cached generation and padded batches, export with
`--model`: the package's own Hugging Face family (hf.py) does both.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

VOCAB = 64


class MCAttention(nn.Module):
    """Stands where LlamaAttention stood: takes its keyword arguments, returns
    (output, attention weights) with no weights, as an attention that returns none does."""

    def __init__(self, mixer: nn.Module):
        super().__init__()
        self.mixer = mixer

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> tuple[torch.Tensor, None]:
        # Causal by construction: the mask, rotary position embeddings and KV cache Llama
        # passes (in kwargs) are not needed by a recurrent memory.
        return self.mixer(hidden_states), None


def import_exported(export_dir: Path):
    """The package of an `mcgen export` folder: the subfolder whose manifest has an export
    section, imported from that folder (as `pip install export_dir` would make it)."""
    for manifest in sorted(export_dir.glob("*/manifest.json")):
        if "export" in json.loads(manifest.read_text(encoding="utf-8")):
            sys.path.insert(0, str(export_dir.resolve()))
            return importlib.import_module(manifest.parent.name)
    raise SystemExit(f"{export_dir}: no package written by `mcgen export` in this folder")


def build_model(package, hidden_size: int, layers: int) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    for index, decoder_layer in enumerate(model.model.layers):
        # MCLayer(d_model, layer_idx, heads=..., key_dim=..., value_dim=..., backend=...):
        # the spec's sizes unless given; the layer makes its own q, k, v and output projections.
        decoder_layer.self_attn = MCAttention(package.MCLayer(hidden_size, layer_idx=index))
    return model


def counting_batch(batch: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, VOCAB, (batch, 1), generator=generator)
    return (starts + torch.arange(seq_len)) % VOCAB


def train(model: LlamaForCausalLM, steps: int, seq_len: int) -> list[float]:
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for _ in range(steps):
        tokens = counting_batch(8, seq_len, generator)
        loss = model(input_ids=tokens, labels=tokens).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export_dir", type=Path, help="a folder written by `mcgen export`")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seq-len", type=int, default=48)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    package = import_exported(args.export_dir)
    model = build_model(package, args.hidden_size, args.layers)
    mixers = sum(isinstance(m, package.MCLayer) for m in model.modules())
    print(f"Llama with {mixers} {package.SPEC['name']} MCLayers in place of attention")

    losses = train(model, args.steps, args.seq_len)
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f} in {args.steps} steps")

    prompt = torch.tensor([[5, 6, 7, 8, 9, 10]])
    model.eval()
    out = model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False)
    print("continues", prompt[0].tolist(), "with", out[0, prompt.shape[1] :].tolist())


if __name__ == "__main__":
    main()
