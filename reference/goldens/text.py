"""Text-decoder goldens: tiny random Gemma 4 checkpoints and what transformers computes on them.

Two configs, each exercising every feature of E2B at once (sliding and full layers with different head dims,
KV sharing for both kinds, double-wide MLPs on shared layers, proportional partial RoPE, PLE, the final
soft-cap, prompts longer than the sliding window); the second adds grouped queries over several KV heads, a
different rotary share and a RoPE scaling factor. For each: the checkpoint (save_pretrained), and for a few
prompts the logits at every position, every decoder layer's output, and a 32-token greedy continuation.
"""
from __future__ import annotations

import copy

import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, Gemma4Config, Gemma4ForConditionalGeneration

from .common import deterministic, out_dir, randomise, save_json, save_tensors

S, F = "sliding_attention", "full_attention"

CONFIGS = {
    # Perch's tinyConfig(): E2B's structure at toy size.
    "e2b-shaped": dict(
        vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=6,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, global_head_dim=32,
        layer_types=[S, S, F, S, S, F], sliding_window=8, num_kv_shared_layers=2,
        use_double_wide_mlp=True, hidden_size_per_layer_input=8, vocab_size_per_layer_input=512,
        final_logit_softcapping=30.0, rms_norm_eps=1e-6,
    ),
    # Several KV heads, a wider rotary share with a scaling factor, other thetas, three shared layers.
    "gqa": dict(
        vocab_size=384, hidden_size=96, intermediate_size=128, num_hidden_layers=7,
        num_attention_heads=4, num_key_value_heads=2, head_dim=24, global_head_dim=48,
        layer_types=[S, S, F, S, F, S, F], sliding_window=5, num_kv_shared_layers=3,
        use_double_wide_mlp=True, hidden_size_per_layer_input=16, vocab_size_per_layer_input=384,
        final_logit_softcapping=20.0, rms_norm_eps=1e-6,
        rope_parameters={
            S: {"rope_type": "default", "rope_theta": 5_000.0},
            F: {"rope_type": "proportional", "partial_rotary_factor": 0.5, "rope_theta": 200_000.0, "factor": 2.0},
        },
    ),
}

# Gemma 3's text decoder, which Perch builds with the same builder and reference behind config switches:
# (1 + w) RMSNorm scales, query_pre_attn_scalar, no v norm, PLE, KV sharing or layer scalars.
GEMMA3 = dict(
    vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=6, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24, layer_types=[S, S, F, S, S, F],
    sliding_window=6, final_logit_softcapping=None, rms_norm_eps=1e-6,
    rope_parameters={S: {"rope_type": "default", "rope_theta": 10_000.0}, F: {"rope_type": "linear", "rope_theta": 1_000_000.0, "factor": 8.0}},
)

PROMPT_LENGTHS = [3, 23, 40]
GREEDY_TOKENS = 32


def build(text: dict, seed: int) -> Gemma4ForConditionalGeneration:
    vocab = text["vocab_size"]
    # Media token ids must lie inside the tiny vocabulary (the real ones are above 255 999).
    cfg = Gemma4Config(
        text_config=text, vision_config=None, audio_config=None,
        boi_token_id=vocab - 7, eoi_token_id=vocab - 6, image_token_id=vocab - 5, video_token_id=vocab - 4,
        boa_token_id=vocab - 3, eoa_token_index=vocab - 2, audio_token_id=vocab - 1,
    )
    model = Gemma4ForConditionalGeneration(cfg).eval()
    randomise(model, seed)
    round_to_bf16(model)
    return model


@torch.no_grad()
def round_to_bf16(model: torch.nn.Module) -> None:
    """The release ships bfloat16 weights: round every saved tensor so the checkpoint holds exactly the weights
    the float32 goldens are computed with. Only saved tensors: computed buffers (RoPE frequencies, embedding
    scales) stay float32, as they are when transformers loads a checkpoint with dtype=float32."""
    for t in list(model.parameters()) + [b for n, b in model.named_buffers() if n.endswith("layer_scalar")]:
        t.copy_(t.to(torch.bfloat16).to(torch.float32))


@torch.no_grad()
def record(model: Gemma4ForConditionalGeneration, ids: list[int]) -> tuple[dict[str, torch.Tensor], dict]:
    layers = (model.model.language_model if hasattr(model.model, "language_model") else model.model).layers
    outputs: dict[int, torch.Tensor] = {}
    hooks = [
        layer.register_forward_hook(lambda _m, _i, out, i=i: outputs.__setitem__(i, out[0] if isinstance(out, tuple) else out))
        for i, layer in enumerate(layers)
    ]
    try:
        logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]
    finally:
        for h in hooks:
            h.remove()
    tensors = {"logits": logits}
    for i, h in outputs.items():
        tensors[f"layer.{i}"] = h[0]

    generated = model.generate(
        input_ids=torch.tensor([ids]), max_new_tokens=GREEDY_TOKENS, min_new_tokens=GREEDY_TOKENS,
        do_sample=False, output_scores=True, return_dict_in_generate=True,
    )
    new = generated.sequences[0, len(ids):].tolist()
    # The smallest top-1/top-2 gap along the way: greedy identity is only a fair test when no step is a near tie.
    margins = []
    for score in generated.scores:
        top = torch.topk(score[0], 2).values
        margins.append(float(top[0] - top[1]))
    return tensors, {"ids": ids, "greedy": new, "min_greedy_margin": min(margins)}


def build_gemma3(text: dict, seed: int) -> Gemma3ForCausalLM:
    model = Gemma3ForCausalLM(Gemma3TextConfig(**text)).eval()
    randomise(model, seed)
    round_to_bf16(model)
    return model


def main() -> None:
    for index, (name, text) in enumerate([*CONFIGS.items(), ("gemma3", GEMMA3)]):
        deterministic(100 + index)
        model = build_gemma3(text, seed=1000 + index) if name == "gemma3" else build(text, seed=1000 + index)
        root = out_dir("text", name)
        copy.deepcopy(model).to(torch.bfloat16).save_pretrained(root / "checkpoint")
        g = torch.Generator().manual_seed(7 + index)
        cases = []
        for n in PROMPT_LENGTHS:
            ids = [2] + torch.randint(3, text["vocab_size"] - 8, (n - 1,), generator=g).tolist()
            tensors, facts = record(model, ids)
            save_tensors(root / f"prompt-{n}.safetensors", tensors)
            cases.append({"file": f"prompt-{n}.safetensors", **facts})
            print(f"  {name} prompt {n}: min greedy margin {facts['min_greedy_margin']:.4f}", flush=True)
        save_json(root / "cases.json", {"config": name, "layers": text["num_hidden_layers"], "cases": cases})
