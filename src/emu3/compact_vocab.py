"""A compact id space for small models: a subset of the Emu3 BPE, the control tokens and a small codebook.

The official vocabulary has 184622 ids; an embedding and a head over it are far too big for a model of
a few megabytes. A folder with `vocab_map.json` keeps the official BPE files (`emu3.tiktoken`, the
image markers) and renumbers the ids it uses:

    0 .. T-1        the listed BPE ranks; the first 256 are the single-byte tokens, so any text can be
                    encoded (a rank outside the table is spelled out as its bytes)
    T .. T+7        pad, eol, eof, bos, eos, img, boi, eoi (the order of `CONTROLS`)
    T+8 ..          the visual codes 0 .. codebook_size-1

`load_tokenizer` picks the right tokenizer for a folder. `CompactTokenizer` speaks compact ids with
the interface of `Tokenizer`, and its `vocab` is the matching `emu3.vocab.Vocab`, so prompting,
generation and training work unchanged. This module does not choose which texts make the table (the
caller passes its corpus) and holds no model.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path

from emu3.tokenizer import (
    BASE_SPECIALS,
    RANKS_FILE,
    VISION_TOKENS_FILE,
    Tokenizer,
    TokenizerError,
)
from emu3.vocab import EMU3, NUM_BPE, Vocab

VOCAB_MAP_FILE = "vocab_map.json"
FORMAT = "emu3-compact-vocab/1"
CONTROLS = ("pad", "eol", "eof", "bos", "eos", "img", "boi", "eoi")


def compact_vocab(num_text: int, codebook_size: int) -> Vocab:
    """The `Vocab` of a compact table with `num_text` text ids and `codebook_size` visual codes."""
    controls = {name: num_text + i for i, name in enumerate(CONTROLS)}
    return Vocab(**controls, visual_base=num_text + len(CONTROLS), codebook_size=codebook_size)


class CompactTokenizer:
    """Text <-> compact ids over an official `Tokenizer` (the BPE) and a table of the ranks kept."""

    def __init__(self, base: Tokenizer, ranks: list[int], codebook_size: int) -> None:
        single = [base.byte_rank(b) for b in range(256)]
        if ranks[:256] != single:
            raise TokenizerError("a compact table must start with the 256 single-byte BPE ranks in byte order")
        if len(set(ranks)) != len(ranks) or not all(0 <= r < NUM_BPE for r in ranks):
            raise TokenizerError("the ranks of a compact table must be distinct BPE ranks")
        if codebook_size < 1:
            raise TokenizerError(f"codebook_size must be positive, got {codebook_size}")
        self.base, self.ranks = base, list(ranks)
        self._compact = {r: i for i, r in enumerate(self.ranks)}
        self.vocab = compact_vocab(len(self.ranks), codebook_size)
        self.visual_base, self.codebook_size, self.vocab_size = self.vocab.visual_base, codebook_size, self.vocab.size
        # official control id <-> compact control id
        self._to_compact = {getattr(EMU3, n): getattr(self.vocab, n) for n in CONTROLS}
        self._to_official = {c: o for o, c in self._to_compact.items()}

    @classmethod
    def build(cls, base: Tokenizer, texts: Iterable[str], codebook_size: int) -> CompactTokenizer:
        """The table of the 256 byte tokens plus every rank `texts` encode to (in increasing order)."""
        single = [base.byte_rank(b) for b in range(256)]
        used = {r for text in texts for r in base.encode(text)} - set(single)
        return cls(base, single + sorted(used), codebook_size)

    @classmethod
    def from_dir(cls, folder: str | Path) -> CompactTokenizer:
        """Load a folder holding the official BPE files and `vocab_map.json`."""
        folder = Path(folder)
        path = folder / VOCAB_MAP_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8
            raise TokenizerError(f"cannot read {path}: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise TokenizerError(f"{path}: expected format {FORMAT!r}")
        try:
            return cls(Tokenizer.from_dir(folder), [int(r) for r in data["ranks"]],
                       int(data["codebook_size"]))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, TokenizerError):
                raise
            raise TokenizerError(f"{path}: malformed ({exc})") from exc

    def save(self, folder: str | Path, ranks_file: str | Path) -> Path:
        """Write a loadable tokenizer folder: `ranks_file` (the official `emu3.tiktoken`) copied, the
        image markers and this codebook's visual tokens, and `vocab_map.json`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ranks_file, folder / RANKS_FILE)
        markers = sorted((i, t) for t, i in self.base.special_ids.items() if t not in BASE_SPECIALS)
        lines = [t for _, t in markers] + [f"<|visual token {c:06d}|>" for c in range(self.codebook_size)]
        (folder / VISION_TOKENS_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
        data = {"format": FORMAT, "codebook_size": self.codebook_size, "ranks": self.ranks}
        (folder / VOCAB_MAP_FILE).write_text(json.dumps(data) + "\n", encoding="utf-8")
        return folder

    def _from_official(self, ids: list[int]) -> list[int]:
        out: list[int] = []
        for i in ids:
            if i < NUM_BPE:
                c = self._compact.get(i)
                out += [c] if c is not None else [self._compact[self.base.byte_rank(b)]
                                                  for b in self.base.token_bytes(i)]
            elif i in self._to_compact:
                out.append(self._to_compact[i])
            elif 0 <= i - self.base.visual_base < self.codebook_size:
                out.append(self.visual_base + i - self.base.visual_base)
            else:
                raise TokenizerError(f"token id {i} ({self.base.decode([i], skip_special=False)!r}) "
                                     "has no place in this compact vocabulary")
        return out

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        """As `Tokenizer.encode`, in compact ids."""
        return self._from_official(self.base.encode(text, allow_special=allow_special))

    def to_official(self, ids: Iterable[int]) -> list[int]:
        """Compact ids -> the official ids of the same tokens."""
        out = []
        for i in map(int, ids):
            if 0 <= i < len(self.ranks):
                out.append(self.ranks[i])
            elif i in self._to_official:
                out.append(self._to_official[i])
            elif self.vocab.visual_base <= i < self.vocab.visual_end:
                out.append(self.base.visual_base + i - self.visual_base)
            else:
                raise TokenizerError(f"id {i} is outside this compact vocabulary of {self.vocab_size}")
        return out

    def decode(self, ids, *, skip_special: bool = True) -> str:
        """As `Tokenizer.decode`: controls and visual codes dropped with `skip_special`, else spelled out."""
        return self.base.decode(self.to_official(ids), skip_special=skip_special)

    def token_id(self, special: str) -> int:
        """The compact id of a special token such as "<|image start|>" or "<|visual token 000042|>"."""
        return self._from_official([self.base.token_id(special)])[0]


def load_tokenizer(folder: str | Path) -> Tokenizer | CompactTokenizer:
    """The text tokenizer of a model folder: compact when it holds `vocab_map.json`, else official."""
    folder = Path(folder)
    return CompactTokenizer.from_dir(folder) if (folder / VOCAB_MAP_FILE).is_file() else Tokenizer.from_dir(folder)
