"""Chat-template goldens: transformers' Gemma4Processor renders and tokenises conversations with Perch's template.

Written to test/fixtures/golden/template/:
  chat_template.jinja  Perch's own Gemma 4 format template (SYNTH_CHAT_TEMPLATE in
                       src/model/build/synth-tokenizer.ts, Apache-2.0), as a file.
  image.jpg            a small seeded JPEG (the image in the media conversation).
  conversations.json   per case: the messages and options passed, apply_chat_template's text
                       (tokenize=False, before media expansion) and input ids (tokenize=True: the processor
                       has expanded each image / audio placeholder into begin marker + soft tokens + end marker),
                       and the soft-token count of each image and clip.

The tokenizer is Perch's synthetic one (vocabulary 512, every special token of the template in it), dumped by
node from the same source the test uses; tokenizer_config gains the media token names Gemma4Processor reads.
The image processor (PIL backend: the torchvision one is not installed; the token count does not depend on
the backend) and the audio feature extractor have their default settings (280-token image budget).
"""
from __future__ import annotations

import json
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np
from PIL import Image
from transformers import AutoTokenizer
from transformers.models.gemma4.feature_extraction_gemma4 import Gemma4AudioFeatureExtractor
from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil
from transformers.models.gemma4.processing_gemma4 import Gemma4Processor

from .common import REPO, out_dir, rel_path

VOCAB = 512
WAV = REPO / "test" / "fixtures" / "audio" / "phrase-1.wav"

# Names Gemma4Processor reads off the tokenizer (tokenizer.image_token, .boi_token, ...).
MEDIA_TOKENS = {
    "image_token": "<|image|>", "boi_token": "<|image>", "eoi_token": "<image|>",
    "audio_token": "<|audio|>", "boa_token": "<|audio>", "eoa_token": "<audio|>",
}

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "City name"},
                    "days": {"type": "integer"},
                    "metric": {"type": "boolean"},
                },
                "required": ["city"],
            },
        },
    }
]

# Media items carry no payload here: the payload (PIL image, samples) is attached per run below.
CASES = [
    {"name": "text", "messages": [{"role": "user", "content": "What is a perch?"}]},
    {
        "name": "system",
        "messages": [
            {"role": "system", "content": "You are a terse assistant on a small board."},
            {"role": "user", "content": "  Say hello.  "},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Again, louder."},
        ],
    },
    {"name": "thinking-on", "thinking": True, "messages": [{"role": "user", "content": "Why is the sky blue?"}]},
    {
        "name": "thinking-on-system", "thinking": True,
        "messages": [{"role": "system", "content": "Think first."}, {"role": "user", "content": "2 + 2?"}],
    },
    {"name": "thinking-off", "thinking": False, "messages": [{"role": "user", "content": "Why is the sky blue?"}]},
    {
        "name": "image",
        "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in this picture?"}]}],
    },
    {
        "name": "audio",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Transcribe this clip."}, {"type": "audio"}]}],
    },
    {
        "name": "tools",
        "tools": TOOLS,
        "messages": [
            {"role": "system", "content": "You can look up the weather."},
            {"role": "user", "content": "Weather in Paris for 2 days?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2, "metric": True}}}
                ],
            },
            {"role": "tool", "name": "get_weather", "content": "sunny, 15 C"},
        ],
    },
    {
        "name": "tools-answered",
        "tools": TOOLS,
        "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {
                "role": "assistant",
                "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}],
            },
            {"role": "tool", "name": "get_weather", "content": "snow, -3 C"},
            {"role": "assistant", "content": "It is snowing in Oslo, -3 degrees."},
            {"role": "user", "content": "Thanks!"},
        ],
    },
]


def synth_tokenizer_files(tmp: Path) -> Path:
    """Perch's synthetic tokenizer files, written by its own code (node + tsx, as the tests load it)."""
    script = (
        "import { writeFileSync } from 'node:fs';"
        "import { synthTokenizerFiles } from './src/model/build/synth-tokenizer.ts';"
        f"const f = synthTokenizerFiles({VOCAB});"
        "const d = process.argv[1];"
        "writeFileSync(d + '/tokenizer.json', f.tokenizerJson);"
        "const cfg = JSON.parse(f.tokenizerConfigJson);"
        f"cfg.extra_special_tokens = {json.dumps(MEDIA_TOKENS)};"
        "writeFileSync(d + '/tokenizer_config.json', JSON.stringify(cfg, null, 2));"
        "writeFileSync(d + '/chat_template.jinja', f.chatTemplate);"
    )
    subprocess.run(["node", "--import", "tsx", "--input-type=module", "-e", script, str(tmp)], cwd=REPO, check=True)
    return tmp


def seeded_image(path: Path) -> Image.Image:
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:75, 0:100]
    rgb = np.stack([x * 2.5, y * 3.4, (x + y) * 1.4], axis=-1) + rng.normal(0, 12, (75, 100, 3))
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(path, quality=90)
    return Image.open(path).convert("RGB")


def wav_samples(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1 and w.getsampwidth() == 2
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return (pcm.astype(np.float32) / 32768.0)


def with_media(messages: list[dict], image: Image.Image, audio: np.ndarray) -> list[dict]:
    out = []
    for m in messages:
        m = dict(m)
        if isinstance(m.get("content"), list):
            m["content"] = [
                {**c, "image": image} if c["type"] == "image" else {**c, "audio": audio} if c["type"] == "audio" else c
                for c in m["content"]
            ]
        out.append(m)
    return out


class Processor(Gemma4Processor):
    """Gemma4Processor without a video processor (whose module needs torchvision, not installed here)."""

    def check_argument_for_proper_class(self, argument_name, argument):
        if argument_name == "video_processor" and argument is None:
            return None
        return super().check_argument_for_proper_class(argument_name, argument)


def main() -> None:
    out = out_dir("template")
    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = synth_tokenizer_files(Path(tmp))
        template = (tok_dir / "chat_template.jinja").read_text()
        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    (out / "chat_template.jinja").write_text(template)
    processor = Processor(
        feature_extractor=Gemma4AudioFeatureExtractor(),
        image_processor=Gemma4ImageProcessorPil(),
        tokenizer=tokenizer,
        video_processor=None,
        chat_template=template,
    )
    image = seeded_image(out / "image.jpg")
    audio = wav_samples(WAV)

    cases = []
    for case in CASES:
        kwargs = {"add_generation_prompt": True}
        if "thinking" in case:
            kwargs["enable_thinking"] = case["thinking"]
        if "tools" in case:
            kwargs["tools"] = case["tools"]
        messages = with_media(case["messages"], image, audio)
        text = processor.apply_chat_template(messages, tokenize=False, **kwargs)
        enc = processor.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)
        ids = [int(i) for i in np.asarray(enc["input_ids"]).reshape(-1)]
        # Soft tokens per medium, as the processor expanded them (one image / clip per case).
        media = {}
        for key, kind in (("image_tokens", "image"), ("audio_tokens", "audio")):
            if any(c.get("type") == kind for m in case["messages"] if isinstance(m.get("content"), list) for c in m["content"]):
                media[key] = [ids.count(tokenizer.convert_tokens_to_ids(MEDIA_TOKENS[f"{kind}_token"]))]
        cases.append({**case, "text": text, "ids": ids, **media})
        print(f"  {case['name']}: {len(text)} chars, {len(ids)} ids {media or ''}", flush=True)

    # Not save_json: its sorted keys would reorder the tools' and calls' mappings, whose order the template keeps.
    facts = {"vocab_size": VOCAB, "wav": rel_path(WAV), "image": rel_path(out / "image.jpg"), "cases": cases}
    (out / "conversations.json").write_text(json.dumps(facts, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
