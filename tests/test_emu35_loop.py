"""The Emu3.5 interleaved loop on a tiny random model: every constraint, official guidance, batching.

The model is random, with a fixed bias on a few logits (`<|image start|>`, eos, some digits) so that
short runs switch between text and images. Validation reads the ids back with the layout rules
alone; the guidance test recomputes every step without a cache from the two official contexts.
"""

from __future__ import annotations

import pytest
import torch

from emu3.config import lm_preset
from emu3.emu35.loop import generate_interleaved
from emu3.emu35.prompts import SizeHeader
from emu3.generation import SamplingConfig, guide
from emu3.model import Transformer
from emu3.vocab import EMU35 as V

HEADER = SizeHeader(tuple(range(15, 25)), 9)  # the ids of "0".."9" and "*" in the Qwen ranks
SAMPLED = SamplingConfig(top_k=50)
GREEDY = SamplingConfig(greedy=True)
PROMPTS = [[V.bos, 100, 200, 300], [V.bos, 5]]
UNCOND = [[V.bos, 7], [V.bos, 8, 9, 10, 11]]


class BiasedLM(Transformer):
    """A random tiny Emu3.5-vocabulary LM whose logits get a constant bias (never on visual ids)."""

    def __init__(self, bias: dict[int, float]):
        super().__init__(lm_preset("emu3.5-tiny", max_position_embeddings=1024))
        self.register_buffer("bias", torch.zeros(V.size), persistent=False)
        for token, value in bias.items():
            self.bias[token] = value
        self.init_weights(std=0.5, generator=torch.Generator().manual_seed(1))
        self.eval()

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return super().logits(hidden) + self.bias


@pytest.fixture(scope="module")
def lm():
    return BiasedLM({V.boi: 12.0, V.eos: 11.0})


def run(model, prompts=PROMPTS, uncond=UNCOND, **kwargs):
    options = dict(vocab=V, header=HEADER, text_sampling=SAMPLED, image_sampling=SAMPLED, cfg_scale=3.0)
    return generate_interleaved(model, prompts, uncond, **{**options, **kwargs})


def read(ids: list[int], budget: int) -> tuple[int, list[tuple[int, int]]]:
    """Check the layout rules on one row's ids; return (text tokens, image grids)."""
    text, grids, i = 0, [], 0
    while i < len(ids):
        t = ids[i]
        assert not V.is_visual(t), f"visual id {t} in text mode at {i}"
        if t == V.eos:
            assert i == len(ids) - 1, "ids after eos"
        if t != V.boi:
            text += 1
            i += 1
            continue
        if V.img not in ids[i:]:  # cut by the budget inside the size header
            assert len(ids) == budget
            break
        img = ids.index(V.img, i)
        size = ids[i + 1:img]
        star = size.index(HEADER.star)
        assert all(d in HEADER.digits for d in size[:star] + size[star + 1:]) and star > 0
        h, w = (int("".join(str(HEADER.digits.index(d)) for d in part)) for part in (size[:star], size[star + 1:]))
        body = ids[img + 1:img + 1 + h * (w + 1)]
        if len(body) < h * (w + 1):  # cut by the budget only
            assert len(ids) == budget
            break
        for pos, token in enumerate(body, 1):
            if pos == h * (w + 1):
                assert token == V.eoi
            elif pos % (w + 1) == 0:
                assert token == V.eol
            else:
                assert V.is_visual(token), f"{token} at row position {pos} of a {h}x{w} image"
        grids.append((h, w))
        i = img + 1 + h * (w + 1)
    assert len(ids) == budget or ids[-1] == V.eos
    return text, grids


def test_every_constraint_holds_in_sampled_runs(lm):
    budget = 50
    out = run(lm, max_new_tokens=budget, sizes=[(2, 3), (3, 2)], seeds=[1, 2])
    totals = [read(row, budget) for row in out]
    for (text, grids), size in zip(totals, [(2, 3), (3, 2)]):
        assert grids and all(g == size for g in grids)
    assert sum(t for t, _ in totals) > 4 and any(row[-1] == V.eos for row in out)


def test_a_free_size_is_chosen_once_as_dd_star_dd_and_then_repeated():
    model = BiasedLM({V.boi: 50.0, HEADER.digits[0]: 40.0, HEADER.digits[1]: 30.0})
    budget = 117 + 7  # one 10x10 image, then the second one's header
    (ids,) = run(model, PROMPTS[:1], UNCOND[:1], max_new_tokens=budget, text_sampling=GREEDY, image_sampling=GREEDY)
    _, grids = read(ids, budget)
    assert grids == [(10, 10)]  # "10*10": the first digit may not be 0
    assert ids[:7] == ids[117:] == [V.boi, 16, 15, 9, 16, 15, V.img]


def test_guidance_uses_the_official_unconditional_context(lm):
    """Every free step equals the uncached argmax: text from the conditional context alone, codes from
    guide(cond, uncond) where uncond = its prompt + the generated image spans only (never the text)."""
    prompt, uncond, scale, budget = PROMPTS[0], UNCOND[0], 3.0, 40
    (ids,) = run(lm, [prompt], [uncond], max_new_tokens=budget, sizes=[(2, 3)], text_sampling=GREEDY,
                 image_sampling=GREEDY, cfg_scale=scale)
    _, grids = read(ids, budget)
    assert len(grids) >= 2 and any(not V.is_visual(t) and t not in (V.boi, V.eoi, V.eol) for t in ids[13:30])
    seen, in_image = [], False
    with torch.no_grad():
        for t, token in enumerate(ids):
            last = lambda seq: lm.logits(lm.hidden(torch.tensor([seq]))[:, -1])[0]  # noqa: E731
            if V.is_visual(token):
                scores = guide(last(prompt + ids[:t])[None], last(uncond + seen)[None], scale)[0]
                assert int(scores[V.visual_base:V.visual_end].argmax()) + V.visual_base == token, t
            elif not in_image:
                assert int(last(prompt + ids[:t])[:V.visual_base].argmax()) == token, t
            in_image = (in_image or token == V.boi) and token != V.eoi
            if in_image or token == V.eoi:
                seen.append(token)


def test_rows_do_not_depend_on_their_batch(lm):
    both = run(lm, max_new_tokens=30, sizes=[(2, 3), None], seeds=[5, 6])
    alone = run(lm, PROMPTS[1:], UNCOND[1:], max_new_tokens=30, sizes=[None], seeds=[6])
    assert both[1] == alone[0]


def test_image_limits_and_the_reserved_image():
    eager = BiasedLM({V.boi: 40.0})
    (text_only,) = run(eager, PROMPTS[:1], None, max_new_tokens=12, max_images=0)
    assert V.boi not in text_only and len(text_only) == 12
    (one,) = run(eager, PROMPTS[:1], UNCOND[:1], max_new_tokens=40, sizes=[(2, 2)], max_images=1)
    assert one[-1] == V.eoi and one.count(V.boi) == 1 and len(one) < 40
    shy = BiasedLM({V.boi: -40.0, V.eos: -40.0})
    (reserved,) = run(shy, PROMPTS[:1], UNCOND[:1], max_new_tokens=30, sizes=[(2, 3)], max_images=1,
                      reserve_image=True)
    assert len(reserved) == 30 and reserved[30 - 13] == V.boi and read(reserved, 30)[1] == [(2, 3)]


def test_bad_requests_are_refused(lm):
    with pytest.raises(ValueError, match="cannot hold"):
        run(lm, PROMPTS[:1], UNCOND[:1], max_new_tokens=10, sizes=[(2, 3)], reserve_image=True)
    with pytest.raises(ValueError, match="seeds"):
        run(lm, max_new_tokens=4, seeds=[1])
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        run(lm, max_new_tokens=0)
    with pytest.raises(ValueError, match="unconditional prompts"):
        run(lm, uncond=UNCOND[:1], max_new_tokens=4)
    with pytest.raises(ValueError, match="context"):
        run(lm, [[V.bos] * 1024], None, max_new_tokens=4)


def test_an_int8_model_runs_the_loop():
    pytest.importorskip("torchao")
    from emu3.quantize import quantize_lm

    model = quantize_lm(BiasedLM({V.boi: 12.0, V.eos: 11.0}), "int8")
    (ids,) = run(model, PROMPTS[:1], UNCOND[:1], max_new_tokens=20, sizes=[(2, 3)], seeds=[1])
    assert read(ids, 20)[1] == [(2, 3)]


def test_a_run_that_cannot_fit_is_refused_before_it_starts(lm, monkeypatch):
    from emu3.generation import memory

    monkeypatch.setattr(memory, "available_bytes", lambda device: 1024)
    with pytest.raises(MemoryError, match="this generation needs"):
        run(lm, max_new_tokens=40)
