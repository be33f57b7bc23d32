"""The memory planner: exact weight and KV-cache bytes, a measured peak within 10%, a clear refusal."""

import json
import subprocess
import sys

import pytest
import torch

from emu3.config import lm_preset
from emu3.generation import memory
from emu3.generation.memory import GiB, MemoryPlan, check_fits, lm_weight_bytes, plan_generation
from emu3.model import KVCache, Transformer
from tests.conftest import REPO


@pytest.mark.parametrize("preset,overrides", [
    ("tiny", {}), ("small", {}), ("emu3-8b", {}), ("tiny", {"head_dim": 16, "qk_norm": True}),
])
def test_weight_bytes_are_exact(preset, overrides):
    cfg = lm_preset(preset, **overrides)
    with torch.device("meta"):
        model = Transformer(cfg)
    for dtype in (torch.float32, torch.bfloat16):
        assert lm_weight_bytes(cfg, dtype) == model.num_parameters() * (torch.finfo(dtype).bits // 8)


def test_kv_cache_bytes_are_exact():
    cfg = lm_preset("tiny", max_position_embeddings=512)
    plan = plan_generation(cfg, dtype=torch.float32, batch=3, prompt_len=20, new_tokens=75, guidance=True)
    with torch.device("meta"):
        model = Transformer(cfg)
    # generate_images' cache: 20 + 75 - 1 slots (the last token is never fed)
    cache = KVCache(cfg.num_layers, 6, cfg.num_kv_heads, 94, cfg.head_size, dtype=torch.float32, device="meta")
    assert plan.kv_cache == sum(t.numel() * 4 for t in cache.k + cache.v)
    del model


@pytest.mark.parametrize("args", [
    ["--grid", "16", "16"],
    ["--grid", "16", "16", "--batch", "2", "--draft-len", "8"],
])
def test_plan_is_within_ten_percent_of_the_measured_peak(args):
    """Measured in a fresh process (peak resident memory on this CPU) with the small preset."""
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "memory.py"), "--preset", "small", *args],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert 0.9 <= result["ratio"] <= 1.1, result


def test_refuses_up_front_with_the_numbers(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2**30)
    plan = MemoryPlan(weights=10 * 2**30, kv_cache=3 * 2**30, activations=2**29)
    with pytest.raises(MemoryError, match=r"needs 3.50 GiB more on cpu but only 1.00 GiB is free"):
        check_fits(plan, torch.device("cpu"))
    check_fits(MemoryPlan(weights=10 * 2**30, kv_cache=2**28, activations=2**28), torch.device("cpu"))
    with pytest.raises(MemoryError, match="--quantize int8"):
        check_fits(MemoryPlan(weights=2**31, kv_cache=0, activations=0), torch.device("cpu"), already_loaded=False)


def test_text_to_image_refuses_before_generating(monkeypatch, tiny):
    from emu3.pipelines import text_to_image

    monkeypatch.setattr(memory, "available_bytes", lambda device: 1024)
    with pytest.raises(MemoryError, match="this generation needs"):
        text_to_image(tiny, "a cat", image_area=4096)


def test_8b_at_720_with_guidance_plan_is_about_20_gib():
    plan = plan_generation(lm_preset("emu3-8b"), dtype=torch.bfloat16, batch=1, prompt_len=64, new_tokens=8193,
                           guidance=True, materialized_attention=False)
    assert 15.8 < plan.weights / 2**30 < 15.9  # 8.49B parameters in bf16
    assert 2.0 < plan.kv_cache / 2**30 < 2.1
    assert 17 < plan.total / 2**30 < 19


def test_cuda_memory_the_allocator_holds_unused_counts_as_free(monkeypatch):
    """mem_get_info alone does not count blocks torch keeps cached from an earlier run, so a server
    refused a second identical batch once the GPU was nearly full."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (2 * GiB, 80 * GiB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 30 * GiB)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 20 * GiB)
    assert memory.available_bytes(torch.device("cuda", 0)) == 12 * GiB
