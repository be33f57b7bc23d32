"""An Emu3.5 response as structured data: ordered text, chain-of-thought and image segments.

`parse_response` splits generated ids the way the official `multimodal_decode` splits the decoded
string (emu35_spec 7.1): `<|extra_101|>` and eos are dropped; `<|extra_60|>..<|extra_61|>` is a
global chain of thought, `<|extra_50|>..<|extra_51|>` an image-level one, `<|image start|>..
<|image end|>` an image (its code grid); everything else is text, kept when not blank. An image cut
short is dropped (its preceding text is kept); an unclosed thought marker is read as text.

`InterleavedResult.save(folder)` writes the images as PNG files, `result.json` (the segments in
order, images by relative path) and `index.html` (the viewer). A folder's earlier `result.json` is
the record of the files an earlier response wrote there: those are replaced, and the images the new
response does not have are removed; files of those names that no record lists are the user's, and
`check_output_folder` refuses them (before any work, when the command calls it). This module does
not run models: decoded images are attached by the pipeline.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from emu3.emu35.prompts import SizeHeader, parse_image_ids
from emu3.emu35.viewer import render_html
from emu3.output_folder import refuse_foreign_files
from emu3.tokenizer import Tokenizer
from emu3.vision.image_processing import to_rgb
from emu3.vocab import EMU35, EMU35_MARKERS, Emu35Markers, Vocab

TEXT, GLOBAL_COT, IMAGE_COT, IMAGE = "text", "global_cot", "image_cot", "image"
RESULT_FILE, VIEWER_FILE = "result.json", "index.html"
_WRITTEN = re.compile(r"(image|reference)_\d{2,}\.png|" + re.escape(RESULT_FILE) + "|" + re.escape(VIEWER_FILE))


@dataclass
class Segment:
    """One piece of a response: `text` for the text kinds, `grid` (h, w) codes (+ `image`) for images."""

    kind: str
    text: str = ""
    grid: torch.Tensor | None = None
    image: Image.Image | None = None


def parse_response(ids: Sequence[int], tokenizer: Tokenizer, header: SizeHeader, vocab: Vocab = EMU35,
                   markers: Emu35Markers = EMU35_MARKERS) -> list[Segment]:
    """The segments of generated ids, in order (images as code grids, not yet decoded)."""
    spans = {markers.bog: (markers.eog, GLOBAL_COT), markers.boc: (markers.eoc, IMAGE_COT),
             vocab.boi: (vocab.eoi, IMAGE)}
    ids = [int(t) for t in ids if t not in (markers.ess, vocab.eos)]
    segments: list[Segment] = []
    pending: list[int] = []

    def flush() -> None:
        text = tokenizer.decode(pending)
        if text.strip():
            segments.append(Segment(TEXT, text))
        pending.clear()

    i = 0
    while i < len(ids):
        opener = ids[i]
        if opener not in spans:
            pending.append(opener)
            i += 1
            continue
        closer, kind = spans[opener]
        try:
            end = ids.index(closer, i + 1)
        except ValueError:
            end = -1
        if end < 0 and kind != IMAGE:  # an unclosed thought reads as text
            i += 1
            continue
        flush()
        if end < 0:  # an image cut short
            break
        body = ids[i + 1:end]
        if kind == IMAGE:
            grid = parse_image_ids(body, header, vocab)
            if grid is not None:
                segments.append(Segment(IMAGE, grid=grid))
        else:
            segments.append(Segment(kind, tokenizer.decode(body)))
        i = end + 1
    flush()
    return segments


@dataclass
class InterleavedResult:
    """What one generation produced. `stopped` is "eos", "image" (a single-image task ended with
    its image) or "length" (the token budget ran out)."""

    task: str
    prompt: str
    segments: list[Segment]
    token_ids: list[int]
    stopped: str
    seed: int | None = None
    seconds: float = 0.0
    references: list[Image.Image] = field(default_factory=list)

    @property
    def images(self) -> list[Image.Image]:
        return [s.image for s in self.segments if s.kind == IMAGE and s.image is not None]

    @property
    def grids(self) -> list[torch.Tensor]:
        return [s.grid for s in self.segments if s.kind == IMAGE]

    @property
    def text(self) -> str:
        """The response's plain text (thoughts excluded), pieces separated by blank lines."""
        return "\n\n".join(s.text.strip() for s in self.segments if s.kind == TEXT)

    def to_dict(self, image_paths: Sequence[str] = (), reference_paths: Sequence[str] = ()) -> dict:
        """The JSON form; images are referred to by `image_paths`, in order."""
        paths = iter(image_paths)
        segments = []
        for s in self.segments:
            if s.kind == IMAGE:
                segments.append({"type": IMAGE, "path": next(paths, None), "grid": list(s.grid.shape)})
            else:
                segments.append({"type": s.kind, "text": s.text})
        return {"task": self.task, "prompt": self.prompt, "reference_images": list(reference_paths),
                "segments": segments, "stopped": self.stopped, "seed": self.seed,
                "seconds": round(self.seconds, 3), "token_ids": self.token_ids}

    def save(self, folder: str | Path) -> Path:
        """Write images, `result.json` and `index.html` into `folder` (see the module docstring); return
        the JSON's path."""
        folder = Path(folder)
        check_output_folder(folder)
        earlier = _recorded(folder)
        folder.mkdir(parents=True, exist_ok=True)
        references = _save_images(self.references, folder, "reference")
        images = _save_images([s.image for s in self.segments if s.kind == IMAGE], folder, "image")
        data = self.to_dict(images, references)
        (folder / RESULT_FILE).write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        (folder / VIEWER_FILE).write_text(render_html(data), encoding="utf-8")
        for name in earlier - _recorded(folder):
            (folder / name).unlink(missing_ok=True)
        return folder / RESULT_FILE


def _recorded(folder: Path) -> set[str]:
    """The files the `result.json` in `folder` says a response wrote there (none without one)."""
    try:
        data = json.loads((folder / RESULT_FILE).read_text(encoding="utf-8"))
        images = [s["path"] for s in data["segments"] if s.get("type") == IMAGE and s.get("path")]
        names = {RESULT_FILE, VIEWER_FILE, *images, *data["reference_images"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()
    return {n for n in names if isinstance(n, str) and _WRITTEN.fullmatch(n)}


def check_output_folder(folder: str | Path) -> None:
    """Refuse an output folder that holds files a response would overwrite but no earlier response wrote."""
    folder = Path(folder)
    refuse_foreign_files(folder, _WRITTEN, _recorded(folder))


def _save_images(images: Sequence[Image.Image | None], folder: Path, stem: str) -> list[str]:
    names = []
    for k, image in enumerate(images):
        if image is None:
            raise ValueError(f"{stem} {k} has no decoded pixels to save")
        name = f"{stem}_{k:02d}.png"
        to_rgb(image).save(folder / name)  # as the model saw it: a CMYK reference cannot be a PNG
        names.append(name)
    return names


__all__ = ["Segment", "InterleavedResult", "parse_response", "TEXT", "GLOBAL_COT", "IMAGE_COT", "IMAGE"]
