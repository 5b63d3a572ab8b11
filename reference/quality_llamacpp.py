"""llama.cpp's side of the quality table (models/README.md, "Quality on a real model").

Run by src/bench/quality.ts (--llama-python) with the files it wrote, so both sides score the same tokens:

  tokens.json          {"chunks": [[bos, id, ...], ...], "vocab": V, "positions": N}: independent chunks,
                       each scored teacher-forced at its positions 0..len-2 (predicting 1..len-1)
  float-logprobs.f32   Perch's float package's log-probs, float32 little-endian [N, V], in chunk order

For each GGUF (the one given and, with --requantize Q2_K, one requantised from it by llama.cpp itself with
allow_requantize) each chunk is evaluated from an empty context (n_ctx = the longest chunk, logits for every
position) and we compute the perplexity, mean KL(float || llama.cpp) in nats and top-1 agreement. Bits per
weight: the stored bytes of the GGUF's 2-D tensors (token_embd and every layer's linears; norms are 1-D) x 8
over their element count, the same tensors Perch counts.

  python reference/quality_llamacpp.py --tokens T --float-logprobs F --gguf Q4.gguf [--requantize Q2_K]
      [--work DIR] [--threads 2] [--json OUT]
"""

import argparse
import ctypes
import json
import os
import sys
import time

import numpy as np


def log(msg):
    print(f"[quality_llamacpp] {msg}", file=sys.stderr, flush=True)


def gguf_bpw(path):
    import gguf

    r = gguf.GGUFReader(path)
    nbytes = 0
    count = 0
    types = {}
    for t in r.tensors:
        if len(t.shape) != 2:
            continue
        nbytes += int(t.n_bytes)
        count += int(t.n_elements)
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    return nbytes * 8 / count, types, {t.name: t.tensor_type.name for t in r.tensors if t.name == "token_embd.weight"}


def requantize(src, dst, ftype_name, threads):
    import llama_cpp

    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype_name}")
    p.allow_requantize = True
    p.nthread = threads
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(p))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize {src} -> {dst} ({ftype_name}) failed: {rc}")


def log_softmax(z):
    """Row-wise log-softmax of float32 logits (sums in float64)."""
    m = z.max(axis=1, keepdims=True)
    lse = m + np.log(np.exp(z - m).sum(axis=1, keepdims=True, dtype=np.float64)).astype(np.float32)
    return z - lse


def measure(path, label, tokens, ref, threads):
    from llama_cpp import Llama

    t0 = time.time()
    chunks = tokens["chunks"]
    V = tokens["vocab"]
    n_ctx = max(len(c) for c in chunks)
    llm = Llama(model_path=path, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True, n_threads=threads, n_threads_batch=threads, verbose=False)
    if llm.n_vocab() != V:
        raise RuntimeError(f"{path}: vocabulary {llm.n_vocab()}, Perch's {V}")
    nll = 0.0
    kl = 0.0
    agree = 0
    row = 0
    for ci, ids in enumerate(chunks):
        llm.reset()
        llm.eval(ids)
        n = len(ids) - 1
        scores = np.asarray(llm.scores[:n], dtype=np.float32)
        for b in range(0, n, 64):
            e = min(n, b + 64)
            lq = log_softmax(scores[b:e])
            lf = np.asarray(ref[row + b : row + e], dtype=np.float32)
            kl += float((np.exp(lf) * (lf - lq)).sum(dtype=np.float64))
            agree += int((lf.argmax(axis=1) == lq.argmax(axis=1)).sum())
            nll -= float(lq[np.arange(e - b), np.asarray(ids[b + 1 : e + 1], dtype=np.int64)].sum(dtype=np.float64))
        row += n
        log(f"{label}: chunk {ci + 1}/{len(chunks)}")
    del llm
    N = tokens["positions"]
    if row != N:
        raise RuntimeError(f"scored {row} positions, tokens.json says {N}")
    bpw, types, embd = gguf_bpw(path)
    out = {
        "name": label,
        "label": f"llama.cpp {label} ({os.path.basename(path)}; 2-D tensor types {types}, token_embd {embd.get('token_embd.weight')})",
        "bpw": bpw,
        "ppl": float(np.exp(nll / N)),
        "kl": kl / N,
        "top1": agree / N,
        "seconds": time.time() - t0,
    }
    log(f"{label}: ppl {out['ppl']:.3f} KL {out['kl']:.5f} top-1 {out['top1']:.4f} bpw {bpw:.3f} ({out['seconds']:.0f} s)")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--float-logprobs", required=True)
    ap.add_argument("--gguf", required=True, help="the shipped GGUF (Q4_K_M)")
    ap.add_argument("--gguf-label", default="Q4_K_M")
    ap.add_argument("--requantize", action="append", default=[], help="llama.cpp ftype (e.g. Q2_K) requantised from --gguf")
    ap.add_argument("--work", default=".")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    a = ap.parse_args()

    with open(a.tokens) as f:
        tokens = json.load(f)
    V = tokens["vocab"]
    N = tokens["positions"]
    ref = np.memmap(a.float_logprobs, dtype="<f4", mode="r")
    if ref.size != N * V:
        raise SystemExit(f"{a.float_logprobs}: {ref.size} floats, expected {N} x {V}")
    ref = ref.reshape(N, V)

    models = [(a.gguf, a.gguf_label)]
    for ft in a.requantize:
        dst = os.path.join(a.work, f"{os.path.splitext(os.path.basename(a.gguf))[0]}-requant-{ft}.gguf")
        if not os.path.exists(dst):
            log(f"requantising {a.gguf} -> {dst} ({ft}, allow_requantize)")
            requantize(a.gguf, dst + ".part", ft, a.threads)
            os.replace(dst + ".part", dst)
        models.append((dst, f"{ft} (requantised from {a.gguf_label})"))

    rows = [measure(p, label, tokens, ref, a.threads) for p, label in models]
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": rows}, f, indent=1)
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
