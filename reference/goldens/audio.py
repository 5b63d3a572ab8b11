"""Audio goldens: transformers' log-mel features on real speech, and a tiny Gemma 4 audio tower + embedder on them.

Written to test/fixtures/golden/audio/:
  checkpoint/          a tiny Gemma4ForConditionalGeneration (save_pretrained, float32): a small text decoder and
                       an audio tower with E2B's structure at toy width (Perch's tinyAudioConfig()): 128 mel bins,
                       subsampling convs [128, C1], chunk 12 / left 13 / right 0, logit cap 50, clipped linears
                       whose bounds are set where they bite (transformers leaves them at +-inf).
  features.safetensors <clip>.features [frames, 128] and <clip>.mask [frames] (0/1) from
                       Gemma4AudioFeatureExtractor with its defaults (the released processor's settings).
  tower.safetensors    <clip>.tower [tokens, output_proj_dims] (audio_tower last_hidden_state),
                       <clip>.embeds [tokens, text hidden] (embed_audio: get_audio_features' pooler_output) and
                       <clip>.mask [tokens] (the tower's output mask); batch.embeds [3, tokens, text hidden] and
                       batch.mask [3, tokens] for the three clips run as one zero-padded batch.
  variant/             a second tower with every E2B constant moved (VARIANT below): config.json, its audio
                       tensors only (model.safetensors) and its outputs on the three clips (tower.safetensors).
  facts.json           per clip: wav, samples, frames, valid frames, tokens, soft-token counts as the processor
                       computes them; the config's media token ids; how often each clip bound bites.
"""
from __future__ import annotations

import shutil
import wave
from types import SimpleNamespace

import numpy as np
import torch
from transformers import Gemma4Config, Gemma4ForConditionalGeneration
from transformers.models.gemma4.feature_extraction_gemma4 import Gemma4AudioFeatureExtractor
from transformers.models.gemma4.modeling_gemma4 import Gemma4ClippableLinear
from transformers.models.gemma4.processing_gemma4 import Gemma4Processor

from .common import REPO, deterministic, out_dir, randomise, rel_path, save_json, save_tensors

SEED = 4242
S, F = "sliding_attention", "full_attention"
VOCAB = 288  # the smallest Perch's synthetic tokenizer (bytes, specials, media markers) fits, rounded up

# A small text decoder: the audio path only needs its width (the embedder projects into it); two layers keep
# the checkpoint small while staying a valid Gemma 4 text config (last layer full attention).
TEXT = dict(
    vocab_size=VOCAB, hidden_size=64, intermediate_size=32, num_hidden_layers=2,
    num_attention_heads=2, num_key_value_heads=1, head_dim=16, global_head_dim=32,
    layer_types=[S, F], sliding_window=8, num_kv_shared_layers=0,
    hidden_size_per_layer_input=8, vocab_size_per_layer_input=VOCAB,
    final_logit_softcapping=30.0, rms_norm_eps=1e-6,
)

# Perch's tinyAudioConfig(): E2B's audio tower at toy width. channels[0] stays 128 because transformers sizes
# input_proj_linear as (channels[0] // 4) * channels[1], which must equal the 32 subsampled mel bins x channels[1].
# Everything not named is E2B's default (chunk 12, left 13, right 0, cap 50, kernel 5, clipped linears, ...).
AUDIO = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, subsampling_conv_channels=[128, 4], output_proj_dims=48)

# Media specials where Perch's synthetic tokenizer puts them for a vocabulary too small for the real ids
# (src/model/build/synth-tokenizer.ts: the last seven ids, in the order of the real ids).
MEDIA_IDS = dict(
    boi_token_id=VOCAB - 7,  # <|image>
    boa_token_id=VOCAB - 6,  # <|audio>
    image_token_id=VOCAB - 5,  # <|image|>
    audio_token_id=VOCAB - 4,  # <|audio|>
    eoi_token_id=VOCAB - 3,  # <image|>
    eoa_token_index=VOCAB - 2,  # <audio|>
    video_token_id=VOCAB - 1,  # <|video|>
)

# A second tower that moves every knob E2B leaves at one value, so that the test sees which setting feeds which
# computation: chunk 8 with left context 5 (transformers then takes ctx // 2 + 1 = 7 relative positions, not
# left = 5), a large rms_norm_eps (transformers uses it for the subsampling LayerNorms, the light-conv norms and
# the embedder, but 1e-6 for the feed-forward and attention-block norms), a gradient_clipping that bites, another
# residual weight, conv kernel and logit cap. Only its audio tensors are stored (no package is made of it).
VARIANT = dict(
    hidden_size=16, num_hidden_layers=2, num_attention_heads=2, subsampling_conv_channels=[128, 4], output_proj_dims=24,
    attention_chunk_size=8, attention_context_left=5, attention_logit_cap=20.0, conv_kernel_size=3,
    residual_weight=0.7, rms_norm_eps=1e-2, gradient_clipping=1.5,
)

CLIPS = ["phrase-1", "phrase-2", "phrase-3"]


def read_wav(name: str) -> np.ndarray:
    """16-bit mono 16 kHz PCM as float32 in [-1, 1), scaled by 1/32768 as Perch scales Int16 samples."""
    path = REPO / "test" / "fixtures" / "audio" / f"{name}.wav"
    with wave.open(str(path)) as w:
        if (w.getnchannels(), w.getsampwidth(), w.getframerate()) != (1, 2, 16000):
            raise SystemExit(f"{path}: expected 16 kHz mono 16-bit PCM")
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return pcm.astype(np.float32) / 32768.0


def build(audio: dict, seed: int) -> Gemma4ForConditionalGeneration:
    cfg = Gemma4Config(text_config=TEXT, vision_config=None, audio_config=audio, **MEDIA_IDS)
    model = Gemma4ForConditionalGeneration(cfg).eval()
    randomise(model, seed)
    return model


def clippable(model) -> list[tuple[str, Gemma4ClippableLinear]]:
    return [(n, m) for n, m in model.model.audio_tower.named_modules() if isinstance(m, Gemma4ClippableLinear)]


@torch.no_grad()
def set_clip_bounds(model, features: torch.Tensor, mask: torch.Tensor) -> None:
    """Puts every ClippableLinear's bounds inside the range its input and output actually take on real speech.

    transformers initialises the four bounds to +-inf, so clipping would never run and a Perch that ignored
    them would still pass. The released checkpoint stores finite, asymmetric bounds; here each bound is set at
    a seeded quantile (1-5 %) of the values seen on speech, one linear at a time in the order the forward pass
    calls them, so each is calibrated on what the already-clipped linears before it produce.
    """
    order: list[Gemma4ClippableLinear] = []
    hooks = [lin.register_forward_pre_hook(lambda m, _a: order.append(m)) for _n, lin in clippable(model)]
    try:
        model.model.get_audio_features(features, mask)
    finally:
        for h in hooks:
            h.remove()
    g = torch.Generator().manual_seed(SEED + 1)
    for lin in order:
        seen: dict[str, torch.Tensor] = {}
        # Copies: lconv1d adds its residual into linear_end's output in place.
        h1 = lin.register_forward_pre_hook(lambda _m, args: seen.__setitem__("in", args[0].detach().flatten().clone()))
        h2 = lin.register_forward_hook(lambda _m, _a, out: seen.__setitem__("out", out.detach().flatten().clone()))
        try:
            model.model.get_audio_features(features, mask)
        finally:
            h1.remove()
            h2.remove()
        lo, hi = (0.01 + 0.04 * torch.rand(2, generator=g)).tolist()
        lin.input_min.fill_(torch.quantile(seen["in"], lo).item())
        lin.input_max.fill_(torch.quantile(seen["in"], 1 - hi).item())
        lo, hi = (0.01 + 0.04 * torch.rand(2, generator=g)).tolist()
        lin.output_min.fill_(torch.quantile(seen["out"], lo).item())
        lin.output_max.fill_(torch.quantile(seen["out"], 1 - hi).item())


@torch.no_grad()
def clip_activity(model, features: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Fraction of values each bound clamps on this clip (facts only: shows the bounds are exercised)."""
    counts: dict[str, float] = {}
    hooks = []
    for name, lin in clippable(model):
        def pre(m, args, name=name):
            x = args[0]
            counts[f"{name}.input"] = ((x < m.input_min) | (x > m.input_max)).float().mean().item()

        def post(m, _args, _out, name=name):
            y = m.linear(torch.clamp(_args[0], m.input_min, m.input_max))
            counts[f"{name}.output"] = ((y < m.output_min) | (y > m.output_max)).float().mean().item()

        hooks += [lin.register_forward_pre_hook(pre), lin.register_forward_hook(post)]
    try:
        model.model.get_audio_features(features, mask)
    finally:
        for h in hooks:
            h.remove()
    return counts


def processor_tokens(mask: np.ndarray, samples: int, extractor: Gemma4AudioFeatureExtractor) -> tuple[int, int]:
    """Soft tokens the processor inserts: from the mask (replace_audio_token) and from the length (_compute_audio_num_tokens)."""
    stub = SimpleNamespace(boa_token="<B>", eoa_token="<E>", audio_token="<A>", feature_extractor=extractor, audio_seq_length=750)
    text = Gemma4Processor.replace_audio_token(stub, {"input_features_mask": [mask]}, 0)
    by_mask = text.count("<A>")
    by_length = Gemma4Processor._compute_audio_num_tokens(stub, np.zeros(samples), 16000)
    return by_mask, by_length


@torch.no_grad()
def write_variant(root, clips: dict, calibrate_on: str) -> dict:
    """variant/: config.json and the audio tensors only (model.safetensors), outputs in variant/tower.safetensors."""
    model = build(VARIANT, SEED + 7)
    set_clip_bounds(model, clips[calibrate_on]["x"], clips[calibrate_on]["m"])
    d = root / "variant"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    model.config.save_pretrained(str(d))
    audio = {k: v for k, v in model.state_dict().items() if k.startswith(("model.audio_tower.", "model.embed_audio."))}
    save_tensors(d / "model.safetensors", audio)
    tensors: dict[str, torch.Tensor] = {}
    facts = {}
    for name in CLIPS:
        c = clips[name]
        out = model.model.get_audio_features(c["x"], c["m"], return_dict=True)
        tensors[f"{name}.tower"] = out.last_hidden_state[0]
        tensors[f"{name}.embeds"] = out.pooler_output[0]
        tensors[f"{name}.mask"] = out.attention_mask[0].to(torch.float32)
        facts[name] = dict(tokens=out.last_hidden_state.shape[1], valid_tokens=int(out.attention_mask.sum()))
    save_tensors(d / "tower.safetensors", tensors)
    return dict(audio_config=VARIANT, clips=facts)


def main() -> None:
    deterministic(SEED)
    root = out_dir("audio")
    extractor = Gemma4AudioFeatureExtractor()  # the released processor's settings are these defaults

    feats: dict[str, torch.Tensor] = {}
    clips = {}
    for name in CLIPS:
        wav = read_wav(name)
        # A batch of one, as the processor passes audio (a bare 1-D array trips a squeeze in transformers 5.25).
        fe = extractor([wav], return_tensors="np")
        x = torch.from_numpy(np.asarray(fe["input_features"], dtype=np.float32))  # [1, frames, 128]
        m = torch.from_numpy(np.asarray(fe["input_features_mask"]))  # [1, frames] bool
        feats[f"{name}.features"] = x[0]
        feats[f"{name}.mask"] = m[0].to(torch.float32)
        by_mask, by_length = processor_tokens(m[0].numpy(), len(wav), extractor)
        clips[name] = dict(
            wav=f"test/fixtures/audio/{name}.wav", samples=len(wav), frames=x.shape[1], valid_frames=int(m.sum()),
            processor_tokens_by_mask=by_mask, processor_tokens_by_length=by_length, x=x, m=m,
        )
    save_tensors(root / "features.safetensors", feats)

    model = build(AUDIO, SEED)
    # Calibrate on the longest clip.
    longest = max(CLIPS, key=lambda n: clips[n]["frames"])
    set_clip_bounds(model, clips[longest]["x"], clips[longest]["m"])

    tower: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name in CLIPS:
            c = clips[name]
            out = model.model.get_audio_features(c["x"], c["m"], return_dict=True)
            tower[f"{name}.tower"] = out.last_hidden_state[0]
            tower[f"{name}.embeds"] = out.pooler_output[0]
            tower[f"{name}.mask"] = out.attention_mask[0].to(torch.float32)
            c["tokens"] = out.last_hidden_state.shape[1]
            c["valid_tokens"] = int(out.attention_mask.sum())
            c["clip_fraction"] = clip_activity(model, c["x"], c["m"])

    # The clips as one batch: the extractor pads each to the longest (padding="longest"), so the shorter ones
    # get masked frames and the tower masks them in its convolutions and attention; single clips never do
    # (padding to a multiple of 128 samples stays under one 160-sample hop).
    wavs = [read_wav(n) for n in CLIPS]
    fe = extractor(wavs, return_tensors="np")
    bx = torch.from_numpy(np.asarray(fe["input_features"], dtype=np.float32))
    bm = torch.from_numpy(np.asarray(fe["input_features_mask"]))
    batch_frames = bx.shape[1]
    for i, name in enumerate(CLIPS):
        c = clips[name]
        alone = torch.zeros(batch_frames, bx.shape[2])
        alone[: c["frames"]] = c["x"][0]
        # The batch holds each clip's own features, zero-padded: the test builds the batch from them.
        assert torch.equal(bx[i], alone), f"{name}: batched features differ from the clip's own"
        assert int(bm[i].sum()) == c["valid_frames"] and not bm[i, c["valid_frames"]:].any()
    with torch.no_grad():
        out = model.model.get_audio_features(bx, bm, return_dict=True)
    tower["batch.embeds"] = out.pooler_output
    tower["batch.mask"] = out.attention_mask.to(torch.float32)
    save_tensors(root / "tower.safetensors", tower)

    ckpt = root / "checkpoint"
    shutil.rmtree(ckpt, ignore_errors=True)
    model.save_pretrained(str(ckpt), safe_serialization=True)

    variant = write_variant(root, clips, longest)

    facts = dict(
        seed=SEED,
        checkpoint=rel_path(ckpt),
        text_config=TEXT,
        audio_config=AUDIO,
        media_token_ids=MEDIA_IDS,
        calibrated_on=longest,
        batch=dict(clips=CLIPS, frames=batch_frames, tokens=out.pooler_output.shape[1], valid_tokens=out.attention_mask.sum(1).tolist()),
        feature_extractor={k: v for k, v in extractor.to_dict().items() if isinstance(v, (int, float, str, bool)) or v is None},
        clips={n: {k: v for k, v in c.items() if k not in ("x", "m")} for n, c in clips.items()},
        variant=variant,
    )
    save_json(root / "facts.json", facts)
    for n, c in clips.items():
        print(f"  {n}: {c['samples']} samples, {c['frames']} frames ({c['valid_frames']} valid), "
              f"{c['tokens']} tokens ({c['valid_tokens']} valid)")
