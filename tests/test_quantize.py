"""Weight-only int8 quantization through torchao: smaller weights, close logits, same loops."""

import pytest
import torch

from emu3.config import lm_preset
from emu3.generation import SamplingConfig
from emu3.generation.engine import generate_images
from emu3.model import Transformer
from emu3.quantize import quantize_lm, weight_bytes
from emu3.vocab import Vocab

pytest.importorskip("torchao")

VOCAB = Vocab(pad=0, eol=40, eof=41, bos=42, eos=43, img=44, boi=45, eoi=46, visual_base=47, codebook_size=64)


def make_model() -> Transformer:
    model = Transformer(lm_preset("tiny", vocab_size=VOCAB.size, hidden_size=64, intermediate_size=192,
                                  pad_token_id=0, max_position_embeddings=128))
    model.init_weights(std=0.05, generator=torch.Generator().manual_seed(0))
    return model.eval()


def test_int8_weights_are_smaller_and_logits_close():
    model = make_model()
    ids = torch.randint(1, VOCAB.size, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(ids)
    linear_fp32 = sum(m.weight.numel() * 4 for m in model.modules() if isinstance(m, torch.nn.Linear))
    before = weight_bytes(model)
    quantize_lm(model, "int8")
    saved = before - weight_bytes(model)
    assert saved > 0.7 * linear_fp32  # int8 data + per-channel scales instead of fp32
    with torch.no_grad():
        out = model(ids)
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()
    assert torch.equal(out.argmax(-1)[:, -4:], ref.argmax(-1)[:, -4:]) or (out - ref).abs().max() < 1e-2


def test_quantized_model_runs_the_fast_and_speculative_loops():
    model = quantize_lm(make_model(), "int8")
    kwargs = dict(vocab=VOCAB, sampling=SamplingConfig(greedy=True), negative_prompts=[[42, 45, 44]], cfg_scale=3.0)
    plain = generate_images(model, [[42, 5, 45, 44]], [(2, 3)], **kwargs)
    assert plain == generate_images(model, [[42, 5, 45, 44]], [(2, 3)], draft_len=4, **kwargs)
    assert len(plain[0]) == 2 * 4 + 3


def test_bad_modes_are_refused():
    with pytest.raises(ValueError, match="unknown quantization"):
        quantize_lm(make_model(), "int3")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="fp8 weights need a CUDA GPU"):
            quantize_lm(make_model(), "fp8")


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp8 is refused on a CPU only")
def test_fp8_on_a_cpu_is_refused_before_the_lm_is_read(emu3_fixture, emu35_fixture, monkeypatch):
    from emu3 import checkpoint
    from emu3.emu35.bundle import Emu35
    from emu3.pipelines.loading import Emu3

    monkeypatch.setattr(checkpoint, "read_tensors", lambda *a, **k: pytest.fail("the LM was read"))
    with pytest.raises(ValueError, match="fp8 weights need a CUDA GPU"):
        Emu3.load(emu3_fixture / "Emu3-tiny", quantize="fp8")
    with pytest.raises(ValueError, match="fp8 weights need a CUDA GPU"):
        Emu35.load(emu35_fixture / "Emu3.5-tiny", quantize="fp8")
