"""The model that ships inside the package: the Shapes-world model (`scripts/train_shapes.py --install`).

Commands that take `--model` fall back to it when none is given, so `emu3 generate "a red circle"`
works right after installation with no download. Its files live in `emu3/assets/shapes/`:
`model/` (a compact-vocabulary Emu3 LM in the original layout) beside `vision-tokenizer/`.
This module only says where they are; loading goes through `emu3.checkpoint` like any folder.
"""

from __future__ import annotations

import os
from pathlib import Path

BUNDLED_DIR = Path(__file__).resolve().parent / "assets" / "shapes"
MODEL_DIR = BUNDLED_DIR / "model"
VISION_TOKENIZER_DIR = BUNDLED_DIR / "vision-tokenizer"


def _require(folder: Path) -> Path:
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"the bundled Shapes model is missing from {folder} (this install lacks its "
                                "package data); pass --model DIR, or rebuild it with scripts/train_shapes.py --install")
    return folder


def model_or_bundled(model: str | os.PathLike | None) -> str | os.PathLike:
    """`model` itself, or the bundled language-model folder when it is None."""
    return _require(MODEL_DIR) if model is None else model


def vision_tokenizer_or_bundled(vision_tokenizer: str | os.PathLike | None) -> str | os.PathLike:
    """`vision_tokenizer` itself, or the bundled vision-tokenizer folder when it is None."""
    return _require(VISION_TOKENIZER_DIR) if vision_tokenizer is None else vision_tokenizer
