"""The language model: parity with the original's logits, exact caching, causality and padding."""

import pytest
import torch

from emu3.checkpoint import load_lm
from emu3.config import lm_preset
from emu3.model import KVCache, Transformer


def test_teacher_forced_logits_match_the_original(tiny, golden_tensors):
    with torch.no_grad():
        logits = tiny.lm(golden_tensors["lm_input_ids"])
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, golden_tensors["lm_logits"], atol=1e-4, rtol=0)


def test_emu35_logits_match_the_official_code(emu35_fixture):
    """Emu3.5's LM (q/k norms, decoupled head_dim) is the same class with another config."""
    from safetensors.torch import load_file

    model = load_lm(emu35_fixture / "Emu3.5-tiny")
    assert model.config.qk_norm and model.config.head_dim == 16
    golden = load_file(str(emu35_fixture / "golden.safetensors"))
    with torch.no_grad():
        logits = model(golden["lm_input_ids"])
    torch.testing.assert_close(logits[:, -4:], golden["lm_logits_last4"], atol=1e-4, rtol=0)


def test_official_8b_architecture_has_the_published_parameter_count():
    with torch.device("meta"):
        model = Transformer(lm_preset("emu3-8b"))
    assert model.num_parameters() == 8_492_011_520


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    model = Transformer(lm_preset("tiny", vocab_size=512, pad_token_id=0, max_position_embeddings=64)).eval()
    model.init_weights(std=0.5, generator=torch.Generator().manual_seed(1))
    return model


def test_cached_decoding_equals_uncached(small):
    ids = torch.randint(1, 512, (2, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = small(ids)
        cache = KVCache.for_model(small, 2, 32)
        steps = [small(ids[:, :8], torch.arange(8), cache)]
        for t in range(8, 20):
            steps.append(small(ids[:, t:t + 1], torch.tensor([t]), cache))
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-4, rtol=1e-4)
    assert torch.equal(torch.cat(steps, 1).argmax(-1), full.argmax(-1))


def test_causality(small):
    ids = torch.randint(1, 512, (1, 16), generator=torch.Generator().manual_seed(3))
    changed = ids.clone()
    changed[0, 10:] = (changed[0, 10:] + 7) % 512
    with torch.no_grad():
        a, b = small(ids), small(changed)
    torch.testing.assert_close(a[:, :10], b[:, :10], atol=0, rtol=0)
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_left_padded_rows_compute_what_they_compute_alone(small):
    short = torch.randint(1, 512, (1, 5), generator=torch.Generator().manual_seed(4))
    long = torch.randint(1, 512, (1, 9), generator=torch.Generator().manual_seed(5))
    batch = torch.cat([long, torch.cat([torch.zeros(1, 4, dtype=torch.long), short], 1)])
    with torch.no_grad():
        cache = KVCache.for_model(small, 2, 16)
        cache.pad_offsets = torch.tensor([0, 4])
        both = small(batch, torch.arange(9), cache)
        alone = small(short)
    torch.testing.assert_close(both[1, 4:], alone[0], atol=1e-5, rtol=1e-5)


def test_cache_longer_than_the_context_is_refused(small):
    with pytest.raises(ValueError, match="exceeds the model's context"):
        KVCache.for_model(small, 1, 65)


def test_dropout_only_in_training():
    model = Transformer(lm_preset("tiny", vocab_size=64, pad_token_id=0, dropout=0.5))
    ids = torch.randint(1, 64, (1, 8))
    model.eval()
    assert torch.equal(model(ids), model(ids))
    model.train()
    assert not torch.equal(model(ids), model(ids))


def test_bf16_training_on_cpu_computes_attention_in_fp32_with_the_same_gradients(monkeypatch):
    """Training in bf16 on a CPU (autocast, or bf16 weights) computes attention in fp32 (a faster
    backward there) and returns v's dtype, with an fp32 reference's gradients up to bf16 rounding of
    the inputs; inference is left in bf16."""
    import torch.nn.functional as F

    from emu3.model.transformer import attention

    computed = []
    original = F.scaled_dot_product_attention

    def spy(*args, **kw):
        out = original(*args, **kw)
        computed.append(out.dtype)
        return out

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    torch.manual_seed(0)
    q = torch.randn(2, 4, 12, 8, requires_grad=True)
    k, v = torch.randn(2, 2, 12, 8, requires_grad=True), torch.randn(2, 2, 12, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention(q, k, v.to(torch.bfloat16), None, 0.0)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        attention(q, k, v.to(torch.bfloat16), None, 0.0)
    q16, k16, v16 = (t.detach().to(torch.bfloat16).requires_grad_() for t in (q, k, v))
    mask = torch.ones(12, 12, dtype=torch.bool).tril()
    assert attention(q16, k16, v16, mask, 0.0).dtype == torch.bfloat16  # bf16 weights, an explicit mask
    assert out.dtype == torch.bfloat16 and computed == [torch.float32, torch.bfloat16, torch.float32]
    out.float().square().sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    original(q, k, v.to(torch.bfloat16).float(), is_causal=True, enable_gqa=True).square().sum().backward()
    for got, want in zip(grads, (q.grad, k.grad, v.grad)):
        torch.testing.assert_close(got, want, atol=0.05, rtol=0.02)
