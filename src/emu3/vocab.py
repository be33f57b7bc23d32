"""Special token ids of the Emu3 vocabulary and the arithmetic between visual codes and token ids.

Everything here is plain integers: no tokenizer files are read. The layout (spec section 4) is
151643 BPE ranks, then `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`, `<|extra_0..204|>`, the three
image markers and the visual tokens `<|visual token cccccc|>` at `VISUAL_BASE + c`: 32768 for Emu3
(`EMU3`), 131072 for Emu3.5 (`EMU35`, whose extra markers are `EMU35_MARKERS`).
"""

from __future__ import annotations

from dataclasses import dataclass

NUM_BPE = 151643
SPECIAL_START = NUM_BPE


@dataclass(frozen=True)
class Vocab:
    """The control ids of one Emu3-family vocabulary and its visual-token range."""

    pad: int = 151643  # <|endoftext|>
    eol: int = 151846  # <|extra_200|>: end of an image row
    eof: int = 151847  # <|extra_201|>: end of an image frame
    bos: int = 151849  # <|extra_203|>
    eos: int = 151850  # <|extra_204|>
    img: int = 151851  # <|image token|>: the visual tokens start after it
    boi: int = 151852  # <|image start|>
    eoi: int = 151853  # <|image end|>
    visual_base: int = 151854  # <|visual token 000000|>
    codebook_size: int = 32768

    @property
    def size(self) -> int:
        return self.visual_base + self.codebook_size

    @property
    def visual_end(self) -> int:
        """One past the last visual-token id."""
        return self.visual_base + self.codebook_size

    def code_to_id(self, code):
        """Visual code(s) -> token id(s); works on ints and integer tensors alike."""
        return code + self.visual_base

    def id_to_code(self, token_id):
        """Token id(s) -> visual code(s); the caller checks `is_visual` first."""
        return token_id - self.visual_base

    def is_visual(self, token_id):
        return (token_id >= self.visual_base) & (token_id < self.visual_end)


EMU3 = Vocab()
# Emu3.5: the same control ids, 131072 IBQ codes (vocabulary 282926); eof exists but is never used.
EMU35 = Vocab(codebook_size=131072)


def extra_token_id(k: int) -> int:
    """The id of `<|extra_k|>` (0 <= k <= 204)."""
    if not 0 <= k <= 204:
        raise ValueError(f"<|extra_{k}|> does not exist (k must be in 0..204)")
    return SPECIAL_START + 3 + k


@dataclass(frozen=True)
class Emu35Markers:
    """Emu3.5's response and chain-of-thought markers (spec 2.2); all are `<|extra_k|>` tokens."""

    bss: int = extra_token_id(100)  # start of the assistant response (ends every prompt)
    ess: int = extra_token_id(101)  # end of the response, followed by eos
    bog: int = extra_token_id(60)  # global chain of thought ...
    eog: int = extra_token_id(61)
    boc: int = extra_token_id(50)  # image-level chain of thought, before an image ...
    eoc: int = extra_token_id(51)


EMU35_MARKERS = Emu35Markers()
