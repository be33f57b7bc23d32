"""Writing frames: one image file, an animated GIF/WebP, or a folder of PNG frames.

A folder gets `frame_00000.png`, `frame_00001.png`, ... and `frames.json`, the record of how many
frames this project wrote there. Frame files are replaced or removed only when that record says this
project wrote them, so a second clip written to the same folder replaces the first one whole, while a
folder holding frame files of the user's (an ffmpeg export, say) is refused, before any work when the
command calls `check_frames_output` first, and never overwritten.
"""

from __future__ import annotations

import functools
import io
import json
import re
from pathlib import Path

from PIL import Image

from emu3.output_folder import refuse_foreign_files

ANIMATED = (".gif", ".webp")
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")
FRAME_NAME = "frame_{:05d}.png"
FRAME_PATTERN = re.compile(r"frame_\d{5}\.png")
FRAMES_RECORD = "frames.json"
FORMAT = "emu3-frames/1"


def is_image_file(path: str | Path) -> bool:
    """Whether `path` names an image file PIL can write an RGB picture to (by its suffix), not an
    existing folder."""
    path = Path(path)
    return not path.is_dir() and _writes_rgb(Image.registered_extensions().get(path.suffix.lower()))


@functools.cache
def _writes_rgb(fmt: str | None) -> bool:
    """Whether PIL writes an RGB picture in format `fmt`: some formats it lists as writable take only
    other modes (XBM) or need a plugin nobody installed (BUFR, GRIB, HDF5)."""
    if fmt not in Image.SAVE:
        return False
    try:
        Image.new("RGB", (1, 1)).save(io.BytesIO(), format=fmt)
    except Exception:  # noqa: BLE001 - each writer refuses in its own way (OSError, ValueError, KeyError, ...)
        return False
    return True


def _written_by_us(folder: Path) -> int:
    """How many frames `frames.json` says this project wrote in `folder` (0 without a readable record)."""
    try:
        record = json.loads((folder / FRAMES_RECORD).read_text())
        return int(record["frames"]) if record.get("format") == FORMAT else 0
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return 0


def _record(folder: Path, count: int) -> None:
    (folder / FRAMES_RECORD).write_text(json.dumps({"format": FORMAT, "frames": count}) + "\n")


def check_frames_output(out: str | Path, count: int) -> None:
    """Refuse an output that `save_frames` would not write as asked for `count` frames."""
    out = Path(out)
    if (count == 1 and is_image_file(out)) or out.suffix.lower() in ANIMATED:
        if out.is_dir():
            raise ValueError(f"-o {out} is a folder; give a file name, or a folder without an image suffix")
        return
    suffix = out.suffix.lower()
    if suffix in Image.registered_extensions() or suffix in VIDEO_SUFFIXES:
        raise ValueError(f"-o {out}: {count} frames cannot be written as one {suffix} file; name a folder, "
                         "or a .gif or .webp file")
    if out.exists() and not out.is_dir():
        raise ValueError(f"-o {out} exists and is not a folder; {count} frames go to a folder, or a .gif or .webp file")
    ours = {FRAME_NAME.format(i) for i in range(_written_by_us(out))}
    refuse_foreign_files(out, FRAME_PATTERN, ours, "frame files")


def save_frames(frames: list[Image.Image], out: str | Path) -> Path:
    """One frame -> an image file if `out` names one; several -> an animated GIF/WebP if `out` says so;
    else a folder of PNG frames and its `frames.json` (see the module docstring)."""
    out = Path(out)
    check_frames_output(out, len(frames))
    if len(frames) == 1 and is_image_file(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        frames[0].save(out)
    elif out.suffix.lower() in ANIMATED:
        out.parent.mkdir(parents=True, exist_ok=True)
        frames[0].save(out, save_all=True, append_images=frames[1:], duration=125, loop=0)
    else:
        out.mkdir(parents=True, exist_ok=True)
        before = _written_by_us(out)
        # Claim the frames first, so that an interrupted write leaves files a rerun may replace.
        _record(out, max(before, len(frames)))
        for i, frame in enumerate(frames):
            frame.save(out / FRAME_NAME.format(i))
        for i in range(len(frames), before):
            (out / FRAME_NAME.format(i)).unlink(missing_ok=True)
        _record(out, len(frames))
    return out
