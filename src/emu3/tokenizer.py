"""The Emu3 text tokenizer on tiktoken (Qwen BPE ranks + Emu3 special tokens).

Reads `emu3.tiktoken` and `emu3_vision_tokens.txt` from a checkpoint folder, or rebuilds the same
ranks from a transformers "-hf" folder's `vocab.json`. User text is encoded with special-token
strings treated as plain text: a prompt containing "<|extra_203|>" cannot inject a control token.
Prompt templates insert control ids directly (see `prompting.py`); visual codes are never strings.
"""

from __future__ import annotations

import base64
import json
import re
import unicodedata
from pathlib import Path

import tiktoken

from emu3.vocab import NUM_BPE, Vocab

# The Qwen pre-tokenizer pattern: note `\p{N}` splits every digit on its own.
PAT_STR = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
    r"""\s*[\r\n]+|\s+(?!\S)|\s+"""
)
BASE_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [f"<|extra_{k}|>" for k in range(205)]
VISUAL_TOKEN = re.compile(r"<\|visual token (\d{6})\|>")
RANKS_FILE = "emu3.tiktoken"
VISION_TOKENS_FILE = "emu3_vision_tokens.txt"
HF_TOKENIZER_FILE = "tokenizer.json"  # a -hf folder's, whose added tokens replace VISION_TOKENS_FILE


class TokenizerError(ValueError):
    """A tokenizer file is missing or malformed."""


def _read_ranks(path: Path) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenizerError(f"cannot read BPE ranks file {path}: {exc}") from exc
    for lineno, line in enumerate(lines, 1):
        if not line:
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError as exc:
            raise TokenizerError(f"{path}:{lineno}: expected 'base64 rank', got {line[:80]!r}") from exc
    _check_ranks(ranks, path)
    return ranks


def _check_ranks(ranks: dict[bytes, int], path: Path) -> None:
    """The ranks of a BPE file must be 0..NUM_BPE-1, each once: any other numbering gives wrong ids."""
    if len(ranks) != NUM_BPE:
        raise TokenizerError(f"{path}: expected {NUM_BPE} BPE ranks, found {len(ranks)} (is the file truncated?)")
    if set(ranks.values()) != set(range(NUM_BPE)):
        raise TokenizerError(f"{path}: the BPE ranks are not exactly 0..{NUM_BPE - 1}, each once")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte <-> printable-unicode table used by byte-level BPE vocab files."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, map(chr, chars)))


def _ranks_from_hf_vocab(path: Path) -> dict[bytes, int]:
    """Rebuild tiktoken ranks from a byte-level BPE `vocab.json` (ids below NUM_BPE are the ranks)."""
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TokenizerError(f"cannot read {path}: {exc}") from exc
    if not isinstance(vocab, dict) or not all(isinstance(i, int) and not isinstance(i, bool) for i in vocab.values()):
        raise TokenizerError(f"{path}: expected a JSON object mapping tokens to integer ids")
    decoder = {c: b for b, c in _bytes_to_unicode().items()}
    ranks = {}
    for token, idx in vocab.items():
        if 0 <= idx < NUM_BPE:
            try:
                ranks[bytes(decoder[c] for c in token)] = idx
            except KeyError as exc:
                raise TokenizerError(f"{path}: token {token!r} is not byte-level BPE") from exc
    _check_ranks(ranks, path)
    return ranks


class Tokenizer:
    """Text <-> ids for Emu3-family checkpoints; special tokens are looked up, never parsed from text."""

    def __init__(self, ranks: dict[bytes, int], extra_specials: list[str]) -> None:
        """`ranks`: the NUM_BPE BPE ranks (checked by `from_dir`'s readers); `extra_specials`: the lines of
        emu3_vision_tokens.txt (image markers, then visual tokens)."""
        markers = [t for t in extra_specials if not VISUAL_TOKEN.fullmatch(t)]
        codebook = len(extra_specials) - len(markers)
        if extra_specials[len(markers):] != [f"<|visual token {c:06d}|>" for c in range(codebook)]:
            raise TokenizerError("the vision tokens must follow the image markers as <|visual token 000000|>, "
                                 "<|visual token 000001|>, ... in order")
        # Visual tokens are ids by arithmetic, not tiktoken specials: 131072 of them would make every
        # load compile a huge regular expression.
        specials = BASE_SPECIALS + markers
        self.special_ids = {tok: NUM_BPE + i for i, tok in enumerate(specials)}
        self._enc = tiktoken.Encoding(
            name="emu3", pat_str=PAT_STR, mergeable_ranks=ranks, special_tokens=self.special_ids
        )
        self.visual_base = NUM_BPE + len(specials)
        self.codebook_size = codebook
        self.vocab_size = self.visual_base + codebook

    @classmethod
    def from_dir(cls, folder: str | Path) -> Tokenizer:
        """Load from a checkpoint folder: original files, or a transformers -hf `vocab.json`."""
        folder = Path(folder)
        vision_file = folder / VISION_TOKENS_FILE
        if (folder / RANKS_FILE).is_file():
            ranks = _read_ranks(folder / RANKS_FILE)
        elif (folder / "vocab.json").is_file():
            ranks = _ranks_from_hf_vocab(folder / "vocab.json")
        else:
            raise TokenizerError(f"no tokenizer in {folder}: expected {RANKS_FILE} or vocab.json")
        if vision_file.is_file():
            specials_file = vision_file
            try:
                extra = [line for line in vision_file.read_text(encoding="utf-8").splitlines() if line]
            except (OSError, UnicodeDecodeError) as exc:
                raise TokenizerError(f"cannot read {vision_file}: {exc}") from exc
        else:
            specials_file, extra = folder / HF_TOKENIZER_FILE, cls._specials_from_hf(folder)
        try:
            return cls(ranks, extra)
        except TokenizerError as exc:  # the image markers and visual tokens are out of order
            raise TokenizerError(f"{specials_file}: {exc}") from None

    @staticmethod
    def _specials_from_hf(folder: Path) -> list[str]:
        """The image markers and visual tokens of a -hf folder (its `tokenizer.json` added tokens)."""
        path = folder / HF_TOKENIZER_FILE
        if not path.is_file():
            raise TokenizerError(f"no {VISION_TOKENS_FILE} or {HF_TOKENIZER_FILE} in {folder}")
        try:
            added = json.loads(path.read_text(encoding="utf-8"))["added_tokens"]
            first = NUM_BPE + len(BASE_SPECIALS)
            by_id = {t["id"]: t["content"] for t in added if t["id"] >= first}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise TokenizerError(f"cannot read added tokens from {path}: {exc!r}") from exc
        gaps = sorted(set(range(first, first + len(by_id))) - set(by_id))
        if gaps:
            raise TokenizerError(f"{path}: the added tokens from id {first} on are not consecutive "
                                 f"(id {gaps[0]} is missing)")
        return [by_id[i] for i in range(first, first + len(by_id))]

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        """Encode text (NFC-normalised). Special-token strings stay plain text unless `allow_special`."""
        text = unicodedata.normalize("NFC", text)
        if not allow_special:
            return self._enc.encode_ordinary(text)
        ids: list[int] = []
        for i, piece in enumerate(VISUAL_TOKEN.split(text)):
            if i % 2:  # a captured visual code
                ids.append(self.token_id(f"<|visual token {piece}|>"))
            elif piece:
                ids += self._enc.encode(piece, allowed_special="all")
        return ids

    def decode(self, ids, *, skip_special: bool = True) -> str:
        """Ids -> text; with `skip_special` every id >= 151643 (control and visual) is dropped."""
        ids = [int(i) for i in ids]
        if skip_special:
            return self._enc.decode([i for i in ids if i < NUM_BPE], errors="replace")
        out, run = [], []
        for i in ids:
            if i < self.visual_base:
                run.append(i)
                continue
            if run:
                out.append(self._enc.decode(run, errors="replace"))
                run = []
            out.append(f"<|visual token {i - self.visual_base:06d}|>")
        if run:
            out.append(self._enc.decode(run, errors="replace"))
        return "".join(out)

    @property
    def vocab(self) -> Vocab:
        """The control ids and visual range of this vocabulary."""
        return Vocab(visual_base=self.visual_base, codebook_size=self.codebook_size)

    def byte_rank(self, byte: int) -> int:
        """The BPE rank of the single-byte token `byte` (0..255)."""
        return self._enc.encode_single_token(bytes([byte]))

    def token_bytes(self, rank: int) -> bytes:
        """The bytes of BPE rank `rank`."""
        return self._enc.decode_single_token_bytes(rank)

    def token_id(self, special: str) -> int:
        """The id of a special token such as "<|image start|>" or "<|visual token 000042|>"."""
        if special in self.special_ids:
            return self.special_ids[special]
        match = VISUAL_TOKEN.fullmatch(special)
        if match and int(match.group(1)) < self.codebook_size:
            return self.visual_base + int(match.group(1))
        raise KeyError(f"{special!r} is not a special token of this vocabulary")
