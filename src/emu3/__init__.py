"""emu3: the Emu3 family of unified multimodal models in PyTorch.

The small public API, imported lazily so that `import emu3` stays cheap:
`emu3.load(model_dir, vision_tokenizer_dir=None, device=..., dtype=...)` returns an `Emu3` bundle,
and the task functions `text_to_image`, `answer`, `Conversation`, `caption` and `reconstruct` take it.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "Emu3": "emu3.pipelines.loading",
    "load": "emu3.pipelines.loading",
    "text_to_image": "emu3.pipelines.text_to_image",
    "answer": "emu3.pipelines.understanding",
    "caption": "emu3.pipelines.understanding",
    "Conversation": "emu3.pipelines.understanding",
    "reconstruct": "emu3.pipelines.reconstruct",
    "SamplingConfig": "emu3.generation.sampling",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'emu3' has no attribute {name!r}")
