"""Shared helpers for the golden fixtures: where they go, how they are written, how weights are randomised.

Every fixture is written by transformers' own code on the CPU in float32. Outputs are stored as safetensors
files (float32 tensors, read in the tests by Perch's own safetensors reader) beside a JSON file of facts
(token ids, shapes, greedy continuations). Checkpoints are written by `save_pretrained`, so their layout,
names and config.json are exactly what transformers writes for the official release.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "test" / "fixtures" / "golden"


def out_dir(*parts: str) -> Path:
    d = GOLDEN.joinpath(*parts)
    d.mkdir(parents=True, exist_ok=True)
    return d


def deterministic(seed: int) -> None:
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file({k: v.detach().to(torch.float32).contiguous() for k, v in tensors.items()}, str(path))


def save_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")


@torch.no_grad()
def randomise(model: torch.nn.Module, seed: int) -> None:
    """Replaces every parameter and buffer that is a weight with seeded random values.

    transformers initialises norm scales to 1 and layer scalars to 1, which would hide a misread norm offset
    ((1 + w) against w) or a dropped layer scalar: every such tensor gets values away from 1 instead.
    Linear weights get variance 1/fan_in so activations stay O(1) through the stack; embeddings get values
    large enough that logits spread and the soft-cap matters.
    """
    g = torch.Generator().manual_seed(seed)
    named = list(model.named_parameters()) + [(n, b) for n, b in model.named_buffers() if n.endswith("layer_scalar")]
    for name, p in named:
        if not p.is_floating_point():
            continue
        u = torch.rand(p.shape, generator=g, dtype=torch.float32) * 2 - 1
        if name.endswith("layer_scalar"):
            p.copy_(0.8 + 0.2 * u)
        elif "norm" in name and p.dim() == 1:
            p.copy_(1 + 0.3 * u)
        elif "embed_tokens_per_layer" in name:
            p.copy_(0.5 * u)
        elif "embed_tokens" in name:
            p.copy_(0.8 * u)
        elif p.dim() >= 2:
            p.copy_(u * (3.0 / p.shape[-1]) ** 0.5)
        else:
            p.copy_(0.1 * u)


def rel_path(p: Path) -> str:
    return os.path.relpath(p, REPO)
