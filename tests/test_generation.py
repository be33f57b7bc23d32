"""Decoding: the golden greedy runs, guidance, the grid constraint, sampling and seeds."""

import numpy as np
import pytest
import torch

from emu3.generation import ImageGrid, SamplingConfig, generate, guide, sample
from emu3.generation.sampling import warp
from emu3.pipelines import answer, text_to_image
from emu3.vocab import EMU3
from tests.conftest import small_vocab

GREEDY = SamplingConfig(greedy=True)


def test_golden_text_to_image(tiny, golden, golden_tensors):
    t2i = golden["t2i"]
    result = text_to_image(tiny, t2i["prompt"], ratio=t2i["ratio"], image_area=t2i["image_area"], cfg=t2i["cfg"],
                           positive_prompt="", negative_prompt=t2i["negative_prompt"], sampling=GREEDY)
    assert result.token_ids[0] == t2i["output_ids"]
    assert result.grid == (8, 8)
    image = np.asarray(result.images[0]).astype(int)
    expected = golden_tensors["t2i_image"].numpy().astype(int)
    assert image.shape == expected.shape
    assert np.abs(image - expected).max() <= 1  # uint8 truncation of values within 1e-4 of the original


def test_golden_vqa(tiny, golden, emu3_fixture):
    from emu3.vision import load_image

    vqa = golden["vqa"]
    result = answer(tiny, [load_image(emu3_fixture / "input.png")], vqa["question"], max_new_tokens=24)
    assert result.token_ids == vqa["output_ids"]


VOCAB = small_vocab()


def _naive_greedy(model, prompt, n):
    ids = torch.tensor([prompt])
    for _ in range(n):
        with torch.no_grad():
            nxt = model(ids)[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], 1)
    return ids[0, len(prompt):].tolist()


def test_cached_greedy_generation_equals_uncached(rand_lm):
    prompt = [42, 5, 9, 13, 2]
    out = generate(rand_lm, [prompt], max_new_tokens=30, sampling=GREEDY, eos_id=-1, pad_id=0)[0]
    assert out == _naive_greedy(rand_lm, prompt, 30)


def test_batched_prompts_equal_single_runs(rand_lm):
    prompts = [[42, 1, 2, 3, 4, 5, 6], [42, 7], [42, 8, 9, 10]]
    batched = generate(rand_lm, prompts, max_new_tokens=12, sampling=GREEDY, eos_id=-1, pad_id=0)
    for p, out in zip(prompts, batched):
        assert out == generate(rand_lm, [p], max_new_tokens=12, sampling=GREEDY, eos_id=-1, pad_id=0)[0]


def test_grid_layout_simulation():
    grid = ImageGrid(torch.tensor([2]), torch.tensor([3]), EMU3)
    forced = [grid.forced(torch.tensor([k])).item() for k in range(1, 12)]
    v = -1
    assert forced == [v, v, v, EMU3.eol, v, v, v, EMU3.eol, EMU3.eof, EMU3.eoi, EMU3.eos]
    assert grid.num_tokens().item() == 11


@pytest.mark.parametrize("sampling", [GREEDY, SamplingConfig(top_k=5), SamplingConfig(top_p=0.9, temperature=1.3)])
def test_constrained_generation_is_a_well_formed_image_per_row(rand_lm, sampling):
    heights, widths = torch.tensor([2, 3]), torch.tensor([4, 1])
    grid = ImageGrid(heights, widths, VOCAB)
    prompts = [[42, 3, 45, 44], [42, 7, 7, 45, 44]]
    outs = generate(rand_lm, prompts, max_new_tokens=int(grid.num_tokens().max()), sampling=sampling,
                    eos_id=VOCAB.eos, pad_id=0, negative_prompts=[[42, 45, 44]] * 2, cfg_scale=3.0, grid=grid,
                    seeds=[1, 2])
    for out, h, w in zip(outs, heights.tolist(), widths.tolist()):
        assert len(out) == h * (w + 1) + 3
        rows = [out[r * (w + 1): (r + 1) * (w + 1)] for r in range(h)]
        for row in rows:
            assert all(VOCAB.is_visual(t) for t in row[:-1]) and row[-1] == VOCAB.eol
        assert out[-3:] == [VOCAB.eof, VOCAB.eoi, VOCAB.eos]


def test_seeds_reproduce_and_rows_are_independent(rand_lm):
    kwargs = dict(max_new_tokens=15, sampling=SamplingConfig(top_k=20), eos_id=-1, pad_id=0)
    a = generate(rand_lm, [[42, 1], [42, 2]], seeds=[10, 11], **kwargs)
    b = generate(rand_lm, [[42, 1], [42, 2]], seeds=[10, 11], **kwargs)
    alone = generate(rand_lm, [[42, 2]], seeds=[11], **kwargs)
    other = generate(rand_lm, [[42, 1]], seeds=[12], **kwargs)
    assert a == b
    assert a[1] == alone[0]
    assert a[0] != other[0]


def test_generation_stops_at_eos_and_reports_progress(rand_lm):
    first = generate(rand_lm, [[42, 3]], max_new_tokens=6, sampling=GREEDY, eos_id=-1, pad_id=0)[0]
    calls = []
    out = generate(rand_lm, [[42, 3]], max_new_tokens=6, sampling=GREEDY, eos_id=first[2], pad_id=0,
                   progress=lambda done, total: calls.append((done, total)))[0]
    assert out == first[: first.index(first[2]) + 1]
    assert calls[0] == (1, 6) and calls[-1][0] == len(out)


def test_guidance_scale_one_is_plain_decoding(rand_lm):
    kwargs = dict(max_new_tokens=8, sampling=GREEDY, eos_id=-1, pad_id=0)
    assert generate(rand_lm, [[42, 3]], negative_prompts=[[42]], cfg_scale=1.0, **kwargs) == \
        generate(rand_lm, [[42, 3]], **kwargs)


def test_guide_formula():
    cond, uncond = torch.randn(2, 10), torch.randn(2, 10)
    expected = uncond.log_softmax(-1) + 3.0 * (cond.log_softmax(-1) - uncond.log_softmax(-1))
    torch.testing.assert_close(guide(cond, uncond, 3.0), expected)


def test_plausibility_keeps_guidance_off_the_conditional_tail():
    # the head code: 0.99 given the prompt, 0.1 without; a tail code: 1e-7 and 1e-13
    cond = torch.tensor([[0.99, 1e-7, 0.01 - 1e-7]]).log()
    uncond = torch.tensor([[0.1, 1e-13, 0.9 - 1e-13]]).log()
    assert guide(cond, uncond, 3.0).argmax(-1).item() == 1  # guidance alone prefers the tail code
    constrained = guide(cond, uncond, 3.0, plausibility=1e-3)
    assert torch.isinf(constrained).tolist() == [[False, True, False]] and constrained.argmax(-1).item() == 0
    # tokens above the floor keep their guided scores exactly
    cond, uncond = torch.randn(4, 50), torch.randn(4, 50)
    kept = cond.softmax(-1) >= 0.2 * cond.softmax(-1).max(-1, keepdim=True).values
    full, cut = guide(cond, uncond, 3.0), guide(cond, uncond, 3.0, plausibility=0.2)
    assert torch.equal(torch.isfinite(cut), kept) and torch.equal(cut[kept], full[kept])


def test_top_k_top_p_and_temperature():
    scores = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert torch.isinf(warp(scores, SamplingConfig(top_k=2))).tolist() == [[True, False, False, True]]
    probs = scores.softmax(-1)[0]  # 0.09, 0.67, 0.24, 0.03
    kept = ~torch.isinf(warp(scores, SamplingConfig(top_p=0.8)))
    assert kept.tolist() == [[False, True, True, False]] and probs[1] < 0.8
    assert sample(scores, SamplingConfig(top_k=1), None).item() == 1
    assert sample(scores, SamplingConfig(temperature=0), None).item() == 1
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([sample(scores, SamplingConfig(), [gen]) for _ in range(4000)])
    freq = torch.bincount(draws.flatten(), minlength=4).float() / 4000
    torch.testing.assert_close(freq, probs, atol=0.03, rtol=0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(temperature=-1), "temperature"), (dict(temperature=float("nan")), "temperature"),
    (dict(temperature=float("inf")), "temperature"), (dict(top_k=0), "top_k"), (dict(top_p=0.0), "top_p"),
    (dict(plausibility=-0.1), "plausibility"), (dict(plausibility=1.0), "plausibility"),
])
def test_bad_sampling_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingConfig(**kwargs)


def test_bad_generation_arguments(rand_lm):
    with pytest.raises(ValueError, match="no prompts"):
        generate(rand_lm, [], max_new_tokens=1, eos_id=1, pad_id=0)
    with pytest.raises(ValueError, match="at least one token"):
        generate(rand_lm, [[]], max_new_tokens=1, eos_id=1, pad_id=0)
    with pytest.raises(ValueError, match="exceeds the model's context"):
        generate(rand_lm, [[1]], max_new_tokens=1000, eos_id=1, pad_id=0)
    with pytest.raises(ValueError, match="negative prompts"):
        generate(rand_lm, [[1]], max_new_tokens=2, eos_id=1, pad_id=0, negative_prompts=[[1], [2]], cfg_scale=2.0)
    for scale in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="cfg_scale must be a finite number > 0"):
            generate(rand_lm, [[1]], max_new_tokens=2, eos_id=1, pad_id=0, negative_prompts=[[2]], cfg_scale=scale)


def test_temperature_zero_warps_to_finite_scores():
    scores = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    warped = warp(scores, SamplingConfig(temperature=0, top_k=2))
    assert not torch.isnan(warped).any() and warped.argmax(-1).item() == 1
    assert torch.isinf(warped).tolist() == [[True, False, False, True]]


def test_a_tiny_temperature_samples_the_most_likely_token():
    """Dividing raw scores by 1e-300 gave inf - inf = NaN in softmax, and every draw was token 0."""
    scores = torch.tensor([[1.0, 3.0, 2.0, 0.0], [5.0, -2.0, 7.0, 6.5]])
    warped = warp(scores, SamplingConfig(temperature=1e-300))
    assert not torch.isnan(warped).any()
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    assert sample(scores, SamplingConfig(temperature=1e-300), gens).tolist() == [1, 2]
    torch.testing.assert_close(warp(scores, SamplingConfig(temperature=0.5)).softmax(-1), (scores / 0.5).softmax(-1))
