"""Image understanding and multi-turn chat: images + question -> answer text.

Uses the official understanding layout (`prompting.chat_prompt`); greedy decoding by default, as
the official scripts, stopping at eos or at `max_new_tokens`, which the model's context may cut
short (as Emu3.5's chat does). `Conversation` keeps the turns (with each answer's exact ids)
so a follow-up question sees the history the model produced.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

from emu3.generation import SamplingConfig, generate
from emu3.generation.loop import Progress
from emu3.pipelines.loading import Emu3
from emu3.prompting import SYSTEM_PROMPT, Turn, caption_prompt, chat_prompt

GREEDY = SamplingConfig(greedy=True)


@dataclass
class ChatResult:
    text: str
    token_ids: list[int]


def _answer(m: Emu3, prompt: list[int], max_new_tokens: int, sampling: SamplingConfig, seed: int | None,
            progress: Progress | None) -> ChatResult:
    lm, tok = m.require_lm()
    context = lm.config.max_position_embeddings
    if len(prompt) >= context:
        raise ValueError(f"the prompt of {len(prompt)} tokens fills the model's context of {context}")
    ids = generate(lm, [prompt], max_new_tokens=min(max_new_tokens, context - len(prompt)), sampling=sampling,
                   eos_id=m.vocab.eos, pad_id=m.vocab.pad, seeds=None if seed is None else [seed],
                   progress=progress)[0]
    return ChatResult(tok.decode(ids).strip(), ids)


@dataclass
class Conversation:
    """A multi-turn chat about images. `ask` appends a turn and returns the answer."""

    m: Emu3
    system: str = SYSTEM_PROMPT
    turns: list[Turn] = field(default_factory=list)

    def ask(self, text: str, images: list[Image.Image] = (), *, max_new_tokens: int = 1024,
            sampling: SamplingConfig = GREEDY, seed: int | None = None, progress: Progress | None = None) -> ChatResult:
        _, tok = self.m.require_lm()
        turn = Turn(text, [self.m.encode_image(im) for im in images])
        prompt = chat_prompt(tok, self.turns + [turn], system=self.system, vocab=self.m.vocab)
        result = _answer(self.m, prompt, max_new_tokens, sampling, seed, progress)
        turn.answer = result.token_ids
        self.turns.append(turn)
        return result


def answer(m: Emu3, images: list[Image.Image], question: str, **kwargs) -> ChatResult:
    """One question about zero or more images."""
    return Conversation(m).ask(question, images, **kwargs)


def caption(m: Emu3, images: list[Image.Image], text: str = "", *, max_new_tokens: int = 256,
            sampling: SamplingConfig = GREEDY, seed: int | None = None) -> ChatResult:
    """Stage1-style captioning: the bare `{images}{text}` layout, continued by the model."""
    _, tok = m.require_lm()
    prompt = caption_prompt(tok, [m.encode_image(im) for im in images], text, vocab=m.vocab)
    return _answer(m, prompt, max_new_tokens, sampling, seed, None)
