"""Shared helpers of the training tests (no tests here): a small vocabulary, a character tokenizer,
tiny datasets and base models, and single-threaded torch (2-thread BLAS on a busy 2-core box is
slower than 1 thread by orders of magnitude for these tiny matrices)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from emu3.checkpoint import save_lm
from emu3.config import lm_preset
from emu3.model import Transformer
from emu3.train import examples
from emu3.train.shards import write_dataset
from emu3.vocab import Vocab

SMALL = Vocab(pad=0, eol=1, eof=2, bos=3, eos=4, img=5, boi=6, eoi=7, visual_base=8, codebook_size=16)
VOCAB_SIZE = 64
CAPTIONS = ["red", "blue", "green", "gray", "pink", "teal", "gold", "plum"]


class CharTokenizer:
    """Text ids 24..63, one per character (enough for prompt layouts; never decoded)."""

    vocab_size = VOCAB_SIZE

    def encode(self, text: str) -> list[int]:
        return [24 + ord(c) % 40 for c in text]


@pytest.fixture(autouse=True)
def one_thread():
    """Torch on one thread for each test (import this fixture into a test module), restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def t2i_dataset(folder: Path, n: int = 4, h: int = 3, w: int = 3, seed: int = 0):
    """`n` text-to-image examples with random h x w grids; returns (examples, code grids)."""
    g = torch.Generator().manual_seed(seed)
    codes = [torch.randint(0, SMALL.codebook_size, (h, w), generator=g) for _ in range(n)]
    exs = [examples.text_to_visual(CharTokenizer(), CAPTIONS[i], [c], vocab=SMALL) for i, c in enumerate(codes)]
    write_dataset(folder, exs, {"vocab_size": VOCAB_SIZE})
    return exs, codes


def base_model(folder: Path, dropout: float = 0.0, seed: int = 0) -> Path:
    """A small-vocabulary tiny LM saved in the original layout."""
    cfg = lm_preset("tiny", vocab_size=VOCAB_SIZE, pad_token_id=SMALL.pad, hidden_size=64, intermediate_size=128,
                    dropout=dropout, max_position_embeddings=256)
    model = Transformer(cfg)
    model.init_weights(0.02, torch.Generator().manual_seed(seed))
    save_lm(model, folder)
    return folder


def test_atomic_writes_give_files_the_mode_open_would(tmp_path):
    """safetensors creates 0o600 files; an export must stay readable by the other users of a machine."""
    from safetensors.torch import save_file

    from emu3.train import atomic

    old = os.umask(0o022)
    try:
        path = atomic.write_file(tmp_path / "a.safetensors", lambda p: save_file({"x": torch.zeros(1)}, str(p)))
        with atomic.staged_dir(tmp_path / "folder") as tmp:
            save_file({"x": torch.zeros(1)}, str(tmp / "b.safetensors"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "folder" / "b.safetensors").stat().st_mode) == 0o644
