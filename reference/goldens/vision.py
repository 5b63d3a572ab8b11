"""Golden fixtures for Gemma 4's vision path: image processor, vision tower and its embedder.

Writes test/fixtures/golden/vision/:
  images/*.jpg          photo-like JPEGs drawn here with PIL (gradients, shapes, stripes, noise), 5 aspect ratios
  decoded.json          PIL's decode of each JPEG (sha256 of the RGB bytes, per-row sums) so the test can check
                        that sharp decodes the same pixels before comparing anything downstream
  processor.json        for each image and EVERY token budget: resized size, patch grid, soft tokens, padded
                        length, and the pixel values as 8-bit codes (sha256 + per patch-row sums); position ids in
                        processor.bin.gz
  codes/*.u8.gz         the full pixel values (patch layout, transformers' order) of three budget-70 cases (the
                        tower's stored inputs), as codes k with pixel = float32(k * (1/255)); the other cases
                        are pinned by sha256 (bit-exact codes) and per patch-row sums (to say where they differ)
  checkpoint/           a tiny Gemma4ForConditionalGeneration (save_pretrained, float32, randomised)
  tower.safetensors     get_image_features' pooler output for a few (image, budget) cases and a padded batch
  tower.json            which cases, shapes

The image processor is Gemma4ImageProcessorPil (image_processing_pil_gemma4.py): the default torchvision
backend needs torchvision, which the pinned reference environment does not install. That backend resizes a
uint8 tensor with torch's own antialiased bicubic kernel (tvF.resize -> F.interpolate on CPU uint8); that
exact call is recorded too ("torch" flavour: sizes come from the PIL processor, only the resize differs), so
both of Perch's resize flavours have a golden.
"""
from __future__ import annotations

import gzip
import hashlib
import math

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from transformers import Gemma4Config, Gemma4ForConditionalGeneration
from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

from .common import deterministic, out_dir, randomise, save_json, save_tensors

BUDGETS = (70, 140, 280, 560, 1120)
PATCH = 16
POOL = 3

# (name, width, height): 4:3, 9:16, 21:9, a small one (upscaled at every budget), a square.
IMAGES = [
    ("landscape_4x3", 640, 480),
    ("portrait_9x16", 360, 640),
    ("wide_21x9", 840, 360),
    ("small", 160, 120),
    ("square", 512, 512),
]

# Cases the tower runs on: (image, budget). Only the first one's codes (and the batch's) are stored in full;
# the test feeds the others from Perch's own preprocessing once their sha256 matches.
TOWER_CASES = [("landscape_4x3", 70), ("portrait_9x16", 70), ("small", 140)]
# A padded batch of two images of different patch counts, as the processor pads them.
TOWER_BATCH = [("wide_21x9", 70), ("small", 70)]


def draw_image(w: int, h: int, seed: int) -> Image.Image:
    """Photo-like content: smooth colour fields, hard-edged shapes, fine stripes and a noisy patch."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    u, v = xx / w, yy / h
    f = rng.uniform(1.0, 3.0, size=(3, 2))
    ph = rng.uniform(0, 2 * np.pi, size=3)
    rgb = np.stack([0.5 + 0.45 * np.sin(2 * np.pi * (f[c, 0] * u + f[c, 1] * v) + ph[c]) for c in range(3)], axis=-1)
    img = Image.fromarray(np.clip(rgb * 255, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = rng.uniform(-0.1, 0.9, 2) * (w, h)
        x1, y1 = x0 + rng.uniform(0.1, 0.4) * w, y0 + rng.uniform(0.1, 0.4) * h
        col = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            d.ellipse([x0, y0, x1, y1], fill=col)
        else:
            pts = [tuple(p) for p in (rng.uniform(0, 1, (5, 2)) * (w, h))]
            d.polygon(pts, fill=col, outline=(0, 0, 0))
    # Fine stripes: aliasing shows at once if the resize filter or its antialiasing is wrong.
    sx, sy = int(0.55 * w), int(0.1 * h)
    for i in range(0, int(0.3 * w), 3):
        d.line([(sx + i, sy), (sx + i + int(0.1 * w), sy + int(0.25 * h))], fill=(250, 250, 240), width=1)
    img = img.filter(ImageFilter.GaussianBlur(0.6))
    a = np.asarray(img).astype(np.int16)
    # Sensor-like noise over the lower-left quarter only (keeps the files small).
    nh, nw = h // 2, w // 2
    a[h - nh:, :nw] += rng.normal(0, 12, (nh, nw, 3)).astype(np.int16)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def to_codes(pv: np.ndarray) -> np.ndarray:
    """Pixel values (float32, k/255 by construction) -> uint8 codes; asserts the round trip is bit exact."""
    codes = np.rint(pv.astype(np.float64) * 255).astype(np.uint8)
    back = (codes.astype(np.float64) * (1 / 255)).astype(np.float32)
    assert np.array_equal(back, pv), "pixel values are not float32(k * (1/255))"
    return codes


def codes_of_resized(img_chw: np.ndarray) -> np.ndarray:
    """Patchify a uint8 (C, H, W) image as convert_image_to_patches does (rows, then columns, then channels)."""
    c, hh, ww = img_chw.shape
    p = img_chw.reshape(c, hh // PATCH, PATCH, ww // PATCH, PATCH).transpose(1, 3, 2, 4, 0)
    return p.reshape((hh // PATCH) * (ww // PATCH), -1)


def row_sums(codes: np.ndarray, cols: int) -> list[int]:
    """Sum of the codes of each row of patches: localises a mismatch that the sha256 only detects."""
    return codes.reshape(-1, cols * codes.shape[1]).sum(axis=1, dtype=np.int64).tolist()


def torch_resize(img: Image.Image, h: int, w: int) -> np.ndarray:
    """What Gemma4ImageProcessor (torchvision backend) does on a CPU: F.interpolate on the uint8 tensor."""
    t = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)[None]
    if (h, w) == tuple(t.shape[-2:]):
        return t[0].numpy()
    r = torch.nn.functional.interpolate(t, size=[h, w], mode="bicubic", align_corners=False, antialias=True)
    return r.clamp_(0, 255)[0].numpy()


def pil_two_pass(img: Image.Image, h: int, w: int) -> np.ndarray:
    """Pillow's kernel as its C source documents it (width pass, then height pass), as two separate calls.

    Pillow 13.0.0's single resize() call agrees with this except in some resizes that enlarge one axis and
    shrink the other, where its result equals the height-first order instead (measured; the rule is not in
    the Pillow sources available here). Recorded so the test can tell that case from a real error.
    """
    out = img
    if w != img.width:
        out = out.resize((w, img.height), Image.BICUBIC)
    if h != img.height:
        out = out.resize((w, h), Image.BICUBIC)
    return np.asarray(out).transpose(2, 0, 1)


def write_gz(path, arr: np.ndarray) -> None:
    # mtime=0: the same bytes on every run.
    with open(path, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0, compresslevel=9) as g:
        g.write(np.ascontiguousarray(arr).tobytes())


def make_images(d) -> dict[str, Image.Image]:
    imgs = {}
    (d / "images").mkdir(exist_ok=True)
    for i, (name, w, h) in enumerate(IMAGES):
        path = d / "images" / f"{name}.jpg"
        draw_image(w, h, 100 + i).save(path, format="JPEG", quality=85)
        imgs[name] = Image.open(path)
        imgs[name].load()
    return imgs


def processor_fixtures(d, imgs: dict[str, Image.Image]) -> dict[tuple[str, int], dict]:
    decoded = {}
    for name, img in imgs.items():
        a = np.asarray(img.convert("RGB"))
        decoded[name] = {"width": a.shape[1], "height": a.shape[0], "sha256": sha(a.tobytes()), "row_sums": a.reshape(a.shape[0], -1).sum(axis=1, dtype=np.int64).tolist()}
    save_json(d / "decoded.json", decoded)

    (d / "codes").mkdir(exist_ok=True)
    facts: dict = {"processor": "Gemma4ImageProcessorPil", "images": {}}
    outputs: dict[tuple[str, int], dict] = {}
    positions = []  # all position ids, concatenated in (image, budget) order, int32 little-endian
    keep_codes = {TOWER_CASES[0], *TOWER_BATCH}
    for name, _, _ in IMAGES:
        per = {}
        for budget in BUDGETS:
            proc = Gemma4ImageProcessorPil(max_soft_tokens=budget)
            out = proc(images=[imgs[name]], return_tensors="np")
            pv = out["pixel_values"][0]
            pos = out["image_position_ids"][0].astype(np.int32)
            soft = int(out["num_soft_tokens_per_image"][0])
            valid = int((pos != -1).all(axis=-1).sum())
            assert valid == soft * POOL * POOL and (pos[valid:] == -1).all() and not pv[valid:].any()
            codes = to_codes(pv[:valid])
            # The grid: the processor's own sizes (its resized image is not returned; recover it from the grid).
            rows, cols = int(pos[:valid, 1].max()) + 1, int(pos[:valid, 0].max()) + 1
            assert rows * cols == valid
            rh, rw = rows * PATCH, cols * PATCH
            tcodes = codes_of_resized(torch_resize(imgs[name], rh, rw))
            hv = codes_of_resized(pil_two_pass(imgs[name], rh, rw))
            per[str(budget)] = {
                "height": rh,
                "width": rw,
                "patch_rows": rows,
                "patch_cols": cols,
                "num_soft_tokens": soft,
                "max_patches": int(pv.shape[0]),
                "positions_offset": sum(p.shape[0] for p in positions),
                "codes_sha256": sha(codes.tobytes()),
                "row_sums": row_sums(codes, cols),
                "torch_codes_sha256": sha(tcodes.tobytes()),
                "torch_row_sums": row_sums(tcodes, cols),
                "pil_two_pass_codes_sha256": sha(hv.tobytes()),
                "pil_vs_two_pass_max_code_diff": int(np.abs(hv.astype(np.int16) - codes.astype(np.int16)).max()),
                "pil_vs_two_pass_differing_values": int((hv != codes).sum()),
                "torch_vs_pil_max_code_diff": int(np.abs(tcodes.astype(np.int16) - codes.astype(np.int16)).max()),
                "torch_vs_pil_differing_values": int((tcodes != codes).sum()),
            }
            positions.append(pos[:valid])
            if (name, budget) in keep_codes:
                write_gz(d / "codes" / f"{name}.{budget}.u8.gz", codes)
            outputs[(name, budget)] = {"pixel_values": torch.from_numpy(pv)[None], "position_ids": torch.from_numpy(pos.astype(np.int64))[None]}
        facts["images"][name] = per
    write_gz(d / "positions.i32.gz", np.concatenate(positions).astype("<i4"))
    save_json(d / "processor.json", facts)
    return outputs


def tiny_model() -> Gemma4ForConditionalGeneration:
    """Text part like Perch's tinyConfig (src/model/gemma4/config.ts); vision like tinyVisionConfig, standardized."""
    text = dict(
        vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=6, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, global_head_dim=32,
        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention", "sliding_attention", "full_attention"],
        sliding_window=8, num_kv_shared_layers=2, use_double_wide_mlp=True, hidden_size_per_layer_input=8,
        vocab_size_per_layer_input=512, final_logit_softcapping=30.0, rms_norm_eps=1e-6,
    )
    vision = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        head_dim=16, rms_norm_eps=1e-6, pooling_kernel_size=POOL, patch_size=PATCH, position_embedding_size=256,
        use_clipped_linears=True, standardize=True,
    )
    cfg = Gemma4Config(
        text_config=text, vision_config=vision, audio_config=None,
        # Media token ids inside the tiny vocabulary.
        boi_token_id=500, eoi_token_id=501, image_token_id=502, video_token_id=503, boa_token_id=504,
        eoa_token_index=505, audio_token_id=506,
    )
    return Gemma4ForConditionalGeneration(cfg).eval()


@torch.no_grad()
def set_buffers(model, sample: dict) -> None:
    """Clip bounds and standardize buffers are buffers, which randomise() leaves at +-inf / 0 / 1: give them
    values that matter. Each clip bound sits at the 3rd / 97th percentile of what its linear sees on a sample
    image, so a few percent of inputs and outputs are clamped; the standardize bias and scale are random."""
    tower = model.model.vision_tower
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = []
    for name, mod in tower.named_modules():
        if hasattr(mod, "use_clipped_linears") and mod.use_clipped_linears:
            hooks.append(mod.linear.register_forward_hook(lambda m, i, o, n=name: seen.__setitem__(n, (i[0].detach(), o.detach()))))
    model.model.get_image_features(**sample)
    for h in hooks:
        h.remove()
    for name, mod in tower.named_modules():
        if name in seen:
            i, o = seen[name]
            i, o = i.flatten().float(), o.flatten().float()
            mod.input_min.fill_(torch.quantile(i, 0.03).item())
            mod.input_max.fill_(torch.quantile(i, 0.97).item())
            mod.output_min.fill_(torch.quantile(o, 0.03).item())
            mod.output_max.fill_(torch.quantile(o, 0.97).item())
    g = torch.Generator().manual_seed(7)
    hs = tower.std_bias.shape[0]
    tower.std_bias.copy_((torch.rand(hs, generator=g) * 2 - 1) * 2)
    tower.std_scale.copy_(0.5 + torch.rand(hs, generator=g))


@torch.no_grad()
def tower_fixtures(d, inputs: dict[tuple[str, int], dict]) -> None:
    deterministic(1234)
    model = tiny_model()
    randomise(model, 4321)
    set_buffers(model, {"pixel_values": inputs[TOWER_CASES[0]]["pixel_values"], "image_position_ids": inputs[TOWER_CASES[0]]["position_ids"]})
    model.save_pretrained(d / "checkpoint", safe_serialization=True)

    tensors: dict[str, torch.Tensor] = {}
    cases = []
    for name, budget in TOWER_CASES:
        x = inputs[(name, budget)]
        out = model.model.get_image_features(pixel_values=x["pixel_values"], image_position_ids=x["position_ids"])
        (emb,) = out.pooler_output
        key = f"{name}.{budget}"
        tensors[key] = emb
        cases.append({"key": key, "image": name, "budget": budget, "shape": list(emb.shape)})
    # The batch: both padded to the budget's max_patches, the shorter with (-1, -1) rows.
    pv = torch.cat([inputs[c]["pixel_values"] for c in TOWER_BATCH])
    pos = torch.cat([inputs[c]["position_ids"] for c in TOWER_BATCH])
    out = model.model.get_image_features(pixel_values=pv, image_position_ids=pos)
    batch = []
    for (name, budget), emb in zip(TOWER_BATCH, out.pooler_output):
        key = f"batch.{name}.{budget}"
        tensors[key] = emb
        batch.append({"key": key, "image": name, "budget": budget, "shape": list(emb.shape)})
    save_tensors(d / "tower.safetensors", tensors)
    save_json(d / "tower.json", {"cases": cases, "batch": batch, "text_hidden_size": model.config.text_config.hidden_size})


def main() -> None:
    deterministic(0)
    d = out_dir("vision")
    imgs = make_images(d)
    inputs = processor_fixtures(d, imgs)
    tower_fixtures(d, inputs)
    total = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
    print(f"[goldens] vision: {total / 1e6:.2f} MB in {d}")
