"""The fast and speculative image loops against the plain loop: same greedy tokens, same distribution."""

import pytest
import torch

from emu3.config import lm_preset
from emu3.generation import ImageGrid, SamplingConfig, generate, guide
from emu3.generation.engine import generate_images
from emu3.model import Transformer
from emu3.vocab import EMU3
from tests.conftest import small_vocab

GREEDY = SamplingConfig(greedy=True)
VOCAB = small_vocab()


@pytest.fixture(scope="module")
def lm(rand_lm):
    return rand_lm


def plain(model, prompts, grids, vocab, **kwargs):
    grid = ImageGrid(torch.tensor([g[0] for g in grids]), torch.tensor([g[1] for g in grids]), vocab)
    return generate(model, prompts, max_new_tokens=int(grid.num_tokens().max()), eos_id=vocab.eos,
                    pad_id=vocab.pad, grid=grid, **kwargs)


@pytest.mark.parametrize("draft_len", [0, 1, 4, 16])
def test_golden_run_through_the_fast_loops(tiny, golden, draft_len):
    t2i = golden["t2i"]
    stats = {}
    out = generate_images(tiny.lm, [t2i["prompt_ids"]], [(8, 8)], vocab=EMU3, sampling=GREEDY,
                          negative_prompts=[t2i["negative_ids"]], cfg_scale=3.0, draft_len=draft_len, stats=stats)
    assert out[0] == t2i["output_ids"]
    assert stats["tokens"] == 75 and stats["forwards"] <= 76


@pytest.mark.parametrize("draft_len", [0, 1, 3, 8])
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_fast_greedy_equals_plain_greedy_with_mixed_grids(lm, cfg, draft_len):
    prompts = [[42, 3, 5, 45, 44], [42, 9, 45, 44], [42, 1, 2, 3, 4, 45, 44]]
    grids = [(3, 4), (2, 2), (1, 5)]
    negative = [[42, 45, 44]] * 3
    fast = generate_images(lm, prompts, grids, vocab=VOCAB, sampling=GREEDY, negative_prompts=negative,
                           cfg_scale=cfg, draft_len=draft_len)
    assert fast == plain(lm, prompts, grids, VOCAB, sampling=GREEDY, negative_prompts=negative, cfg_scale=cfg)
    assert [len(o) for o in fast] == [h * (w + 1) + 3 for h, w in grids]


def test_jacobi_needs_fewer_forwards_when_the_model_is_predictable():
    """All embeddings equal: every position predicts the same code, so the Jacobi drafts are right."""
    model = Transformer(lm_preset("tiny", vocab_size=VOCAB.size, pad_token_id=0, max_position_embeddings=256))
    model.init_weights(std=0.3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.model.embed_tokens.weight[:] = model.model.embed_tokens.weight[1]
    stats = {}
    out = generate_images(model.eval(), [[42, 45, 44]], [(4, 8)], vocab=VOCAB, sampling=GREEDY, draft_len=8,
                          stats=stats)
    assert out == plain(model, [[42, 45, 44]], [(4, 8)], VOCAB, sampling=GREEDY)
    assert stats["forwards"] * 4 <= stats["tokens"]


def test_fast_sampling_is_reproducible_per_seed(lm):
    kwargs = dict(vocab=VOCAB, sampling=SamplingConfig(top_k=8), negative_prompts=[[42, 45, 44]] * 2,
                  cfg_scale=2.0)
    a = generate_images(lm, [[42, 1, 45, 44]] * 2, [(2, 3)] * 2, seeds=[5, 6], **kwargs)
    b = generate_images(lm, [[42, 1, 45, 44]], [(2, 3)], seeds=[6], **{**kwargs, "negative_prompts": [[42, 45, 44]]})
    assert a[1] == b[0] and a[0] != a[1]


def test_a_seeded_image_does_not_depend_on_the_other_rows_grids(lm):
    """Rows on a forced eol/eof drew noise too, so a 2x3 neighbour shifted a 2x2 row's later draws."""
    kwargs = dict(vocab=VOCAB, sampling=SamplingConfig(), negative_prompts=[[42, 45, 44]], cfg_scale=2.0)
    alone = generate_images(lm, [[42, 1, 45, 44]], [(2, 2)], seeds=[7], **kwargs)
    for grids in ([(2, 2), (2, 3)], [(2, 2), (3, 1)], [(2, 2), (1, 5)]):
        batched = generate_images(lm, [[42, 1, 45, 44], [42, 2, 3, 45, 44]], grids, seeds=[7, 8],
                                  **{**kwargs, "negative_prompts": [[42, 45, 44]] * 2})
        assert batched[0] == alone[0], grids


def test_the_cache_holds_exactly_the_fed_tokens(lm):
    """A prompt plus its image may fill the context to the last position: the final eos is never fed,
    and speculative windows stop at it (they were given draft_len spare slots, refused near the limit)."""
    grid = (14, 16)  # 14 * 17 + 3 = 241 tokens; context 256
    prompt = [42] + [1] * 13 + [45, 44]  # 16 tokens: 16 + 241 - 1 = 256 positions fed
    for draft_len in (0, 8, 40):
        out = generate_images(lm, [prompt], [grid], vocab=VOCAB, sampling=GREEDY, draft_len=draft_len)
        assert len(out[0]) == 241
    with pytest.raises(ValueError, match="exceeds the model's context"):
        generate_images(lm, [prompt + [1]], [grid], vocab=VOCAB, sampling=GREEDY)
    assert plain(lm, [prompt], [grid], VOCAB, sampling=GREEDY) == out


@pytest.mark.parametrize("draft_len", [0, 3])
def test_fast_sampling_has_the_plain_distribution(lm, draft_len):
    """The first two visual tokens' marginals match the exact guided, masked distribution."""
    n = 3000
    prompt, negative, scale = [42, 7, 45, 44], [42, 45, 44], 2.0
    out = generate_images(lm, [prompt] * n, [(1, 2)] * n, vocab=VOCAB, sampling=SamplingConfig(),
                          negative_prompts=[negative] * n, cfg_scale=scale, seeds=list(range(n)),
                          draft_len=draft_len)
    codes = torch.tensor([o[:2] for o in out]) - VOCAB.visual_base  # (n, 2)

    def next_probs(ctx):  # exact guided distribution over the 16 codes after `ctx`
        with torch.no_grad():
            cond, uncond = lm(torch.tensor([prompt + ctx]))[:, -1], lm(torch.tensor([negative + ctx]))[:, -1]
        scores = guide(cond, uncond, scale)[0, VOCAB.visual_base:VOCAB.visual_end]
        return scores.softmax(-1)

    p1 = next_probs([])
    p2 = sum(p1[c] * next_probs([VOCAB.visual_base + c]) for c in range(16))
    for observed, expected in ((codes[:, 0], p1), (codes[:, 1], p2)):
        freq = torch.bincount(observed, minlength=16).float() / n
        # 4.5 standard errors per cell: a wrong distribution fails, sampling noise does not.
        tol = 4.5 * (expected * (1 - expected) / n).sqrt() + 1e-3
        assert ((freq - expected).abs() <= tol).all(), (freq, expected)


def test_grid_count_must_match_prompts(lm):
    with pytest.raises(ValueError, match="one grid per prompt"):
        generate_images(lm, [[42, 45, 44]], [(1, 1), (2, 2)], vocab=VOCAB)


@pytest.mark.parametrize("draft_len", [0, 3])
def test_temperature_zero_is_greedy_in_the_fast_loops(lm, draft_len):
    prompts, grids, negative = [[42, 3, 5, 45, 44], [42, 9, 45, 44]], [(3, 4), (2, 2)], [[42, 45, 44]] * 2
    kwargs = dict(vocab=VOCAB, negative_prompts=negative, cfg_scale=3.0, draft_len=draft_len)
    cold = generate_images(lm, prompts, grids, sampling=SamplingConfig(temperature=0.0), seeds=[1, 2], **kwargs)
    assert cold == generate_images(lm, prompts, grids, sampling=GREEDY, **kwargs)


@pytest.mark.parametrize("draft_len", [0, 3])
def test_full_plausibility_draws_the_conditional_argmax_in_every_loop(lm, draft_len):
    # near 1, only the conditional's most likely code survives guidance, so sampling becomes unguided greedy
    prompts, grids, negative = [[42, 3, 5, 45, 44], [42, 9, 45, 44]], [(3, 4), (2, 2)], [[42, 45, 44]] * 2
    strict = SamplingConfig(plausibility=0.999)
    guided = generate_images(lm, prompts, grids, vocab=VOCAB, sampling=strict, negative_prompts=negative,
                             cfg_scale=3.0, seeds=[1, 2], draft_len=draft_len)
    unguided = generate_images(lm, prompts, grids, vocab=VOCAB, sampling=GREEDY)
    assert guided == unguided == plain(lm, prompts, grids, VOCAB, sampling=strict, negative_prompts=negative,
                                       cfg_scale=3.0, seeds=[1, 2])
    assert guided != generate_images(lm, prompts, grids, vocab=VOCAB, sampling=GREEDY, negative_prompts=negative,
                                     cfg_scale=3.0)  # guidance does change these codes


def test_empty_grids_and_negative_draft_lengths_are_refused(lm):
    for grid in [(0, 3), (2, 0), (-1, 2)]:
        with pytest.raises(ValueError, match="at least one row and one column"):
            generate_images(lm, [[42, 45, 44]], [grid], vocab=VOCAB, sampling=GREEDY)
    with pytest.raises(ValueError, match="draft_len must be >= 0"):
        generate_images(lm, [[42, 45, 44]], [(2, 2)], vocab=VOCAB, sampling=GREEDY, draft_len=-2)
