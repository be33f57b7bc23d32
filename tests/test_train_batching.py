"""The data plan: deterministic in (seed, step), split identically over processes, bucketed, weighted."""

import numpy as np
import pytest

from emu3.train.batching import Layout, Plan


def _plan(world=1, accum=2, lengths=None, groups=None, weights=(1.0,), bucket_window=2, drop_prob=0.0):
    lengths = np.arange(10, 42) if lengths is None else lengths
    groups = [np.arange(len(lengths))] if groups is None else groups
    return Plan(lengths, groups, list(weights), Layout(2, accum, world), seed=3, bucket_window=bucket_window,
                drop_prob=drop_prob)


def test_one_process_and_two_processes_cover_the_same_global_batches():
    one, two = _plan(world=1, accum=2), _plan(world=2, accum=1)
    assert one.steps_per_epoch == two.steps_per_epoch == 8
    for step in range(20):  # into the third epoch
        mine = sorted(i for mb in one.micro_batches(step, 0) for i in mb.indices)
        theirs = sorted(i for r in (0, 1) for mb in two.micro_batches(step, r) for i in mb.indices)
        assert mine == theirs == sorted(one.step(step)[0].tolist())


def test_every_epoch_is_a_new_permutation_of_all_examples():
    plan = _plan()
    epochs = [np.sort(plan.epoch(e)[0].ravel()) for e in range(3)]
    assert all((e == np.arange(32)).all() for e in epochs)
    assert not np.array_equal(plan.epoch(0)[0], plan.epoch(1)[0])
    assert np.array_equal(plan.epoch(1)[0], _plan().epoch(1)[0])  # a pure function of seed and epoch


def test_bucketing_groups_similar_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 1000, 256)
    pad = {}
    for window in (0, 8):
        plan = _plan(lengths=lengths, bucket_window=window)
        pad[window] = sum(len(mb.indices) * lengths[list(mb.indices)].max() - lengths[list(mb.indices)].sum()
                          for s in range(plan.steps_per_epoch) for mb in plan.micro_batches(s, 0))
    assert pad[8] < pad[0] / 5


def test_mixture_weights_and_caption_dropout_draws():
    groups = [np.arange(0, 16), np.arange(16, 32)]
    plan = _plan(groups=groups, weights=(2.0, 0.5), drop_prob=0.25)
    batches, drops = plan.epoch(0)
    counts = np.bincount(batches.ravel(), minlength=32)
    assert plan.steps_per_epoch == (32 + 8) // 4
    assert (counts[:16] == 2).all() and (counts[16:] <= 1).all() and counts[16:].sum() == 8
    assert 0.1 < drops.mean() < 0.4


def test_too_little_data_for_one_batch():
    with pytest.raises(ValueError, match="fewer than one global batch"):
        _plan(lengths=np.arange(3))
