"""Output folders that commands write into, beside files of the user's: what they may not overwrite.

A command that writes a family of files into a folder (`frame_00000.png` ..., or `image_00.png`,
`result.json` ...) keeps a record of the ones it wrote; `refuse_foreign_files` refuses a folder that
holds files of those names the record does not list, before any work. This module does not write.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from pathlib import Path


def refuse_foreign_files(folder: Path, names: re.Pattern, ours: Collection[str], what: str = "files") -> None:
    """Raise ValueError when `folder` is a file, or holds files matching `names` that are not in `ours`."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"-o {folder} exists and is not a folder")
    if not folder.is_dir():
        return
    foreign = sorted(p.name for p in folder.iterdir() if names.fullmatch(p.name) and p.name not in ours)
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise ValueError(f"-o {folder} holds {what} this did not write ({foreign[0]}{more}); "
                         "choose another folder or move them away")
