"""Regenerates every golden fixture under test/fixtures/golden/ from transformers' own code.

    reference/setup.sh && reference/.venv/bin/python reference/make_goldens.py [section ...]

Sections: text, audio, vision, template (default: all). Each writes its own folder; the output is
deterministic (seeded weights, seeded inputs, one CPU thread), so regenerating changes no bytes unless the
pinned versions or the scripts change.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

SECTIONS = ["text", "audio", "vision", "template"]


def main(argv: list[str]) -> None:
    wanted = argv or SECTIONS
    for name in wanted:
        if name not in SECTIONS:
            raise SystemExit(f"unknown section {name!r}; choose from {', '.join(SECTIONS)}")
    for name in wanted:
        module = importlib.import_module(f"goldens.{name}")
        print(f"[goldens] {name}", flush=True)
        module.main()


if __name__ == "__main__":
    main(sys.argv[1:])
