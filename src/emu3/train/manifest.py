"""The JSONL training manifest: one record per line, checked and turned into a typed `Record`.

Record shapes (relative paths are resolved against the manifest's folder):

    {"image": "a.png", "caption": "a red fox"}                              text-to-image
    {"video": "clip.mp4", "caption": "..."}                                 video (a file, GIF/WebP or frame folder)
    {"frames": ["f0.png", "f1.png", ...], "caption": "..."}                 video from a list of frames
    {"image": "a.png", "question": "...", "answer": "..."}                  visual question answering
    {"image": "a.png", "turns": [{"question": "...", "answer": "..."}, ...]} multi-turn chat about an image

An optional "id" names the record in reports; an optional "meta" (anything) is carried along and
ignored. Any other key is an error, so a typo such as "captoin" is reported instead of silently
training on nothing. A bad record raises `RecordError` with a short `reason` category (for the
summary's counts) and a message naming the problem. This module reads no pixels (`prepare.py`
does); it only checks that the named files exist.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

KNOWN_KEYS = frozenset({"id", "meta", "image", "video", "frames", "caption", "question", "answer", "turns"})


class RecordError(ValueError):
    """A manifest record that cannot be used; `reason` is a short category for the summary."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class QA:
    question: str
    answer: str


@dataclass(frozen=True)
class Record:
    """One usable manifest record."""

    line: int  # 1-based line number in the manifest
    id: str
    image: Path | None = None
    video: Path | None = None
    frames: tuple[Path, ...] = ()
    caption: str | None = None
    turns: tuple[QA, ...] = ()

    @property
    def task(self) -> str:
        if self.turns:
            return "vqa"
        return "video" if self.video is not None or self.frames else "t2i"


def read_lines(path: str | Path) -> list[tuple[int, str]]:
    """(line number, text) of the non-blank lines of a manifest."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (some editors write one) is not a record
    except FileNotFoundError:
        raise FileNotFoundError(f"manifest not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read manifest {path}: {exc}") from None
    return [(i, line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]


def _text(data: dict, key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise RecordError("invalid record", f"{where}: {key!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise RecordError(f"empty {key}", f"{where}: empty {key}")
    return value


def _path(value: object, base: Path, where: str, folder_ok: bool = False) -> Path:
    """An existing path; a folder only where `folder_ok` (a video given as a folder of frames)."""
    if not isinstance(value, str) or not value:
        raise RecordError("invalid record", f"{where}: a path must be a non-empty string, got {value!r}")
    path = Path(value).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.exists():
        raise RecordError("missing file", f"{where}: file not found: {path}")
    if path.is_dir() and not folder_ok:
        raise RecordError("invalid record", f"{where}: {path} is a folder, not an image file")
    return path


def parse_record(line: int, text: str, base: Path, *, need_text: bool = True) -> Record:
    """Check one manifest line; `need_text=False` accepts media with no caption (vision-tokenizer data)."""
    where = f"line {line}"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError("invalid json", f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise RecordError("invalid record", f"{where}: expected a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - KNOWN_KEYS)
    if unknown:
        raise RecordError("invalid record", f"{where}: unknown keys {unknown}; known: {sorted(KNOWN_KEYS)}")
    rid = str(data.get("id", where))
    where = f"line {line} ({rid})" if "id" in data else where
    media = [k for k in ("image", "video", "frames") if k in data]
    if len(media) != 1:
        raise RecordError("invalid record", f"{where}: needs exactly one of 'image', 'video', 'frames', got {media}")
    image = _path(data["image"], base, where) if "image" in data else None
    video = _path(data["video"], base, where, folder_ok=True) if "video" in data else None
    frames: tuple[Path, ...] = ()
    if "frames" in data:
        if not isinstance(data["frames"], list) or not data["frames"]:
            raise RecordError("invalid record", f"{where}: 'frames' must be a non-empty list of paths")
        frames = tuple(_path(p, base, where) for p in data["frames"])
    turns: list[QA] = []
    if "turns" in data:
        if "question" in data or "answer" in data or not isinstance(data["turns"], list) or not data["turns"]:
            raise RecordError("invalid record", f"{where}: 'turns' must be a non-empty list, without question/answer")
        for i, turn in enumerate(data["turns"]):
            if not isinstance(turn, dict) or set(turn) != {"question", "answer"}:
                raise RecordError("invalid record", f"{where}: turn {i} must be {{'question': ..., 'answer': ...}}")
            turns.append(QA(_text(turn, "question", f"{where} turn {i}"), _text(turn, "answer", f"{where} turn {i}")))
    elif "question" in data or "answer" in data:
        turns.append(QA(_text(data, "question", where), _text(data, "answer", where)))
    caption = None
    if turns:
        if image is None:
            raise RecordError("invalid record", f"{where}: questions need an 'image'")
        if "caption" in data:
            raise RecordError("invalid record", f"{where}: give a caption or question/answer turns, not both")
    elif need_text:
        caption = _text(data, "caption", where)
    return Record(line=line, id=rid, image=image, video=video, frames=frames, caption=caption, turns=tuple(turns))
