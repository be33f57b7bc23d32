"""Shared pytest fixtures: paths to the parity fixtures in ../shared (skipped cleanly when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
EMU3_FIXTURE = SHARED / "fixtures" / "emu3-tiny-original"
EMU35_FIXTURE = SHARED / "fixtures" / "emu35-tiny-original"


def small_vocab():
    """A small Emu3-like vocabulary: 40 text ids, then control ids, then 16 visual codes (ids 47..62)."""
    from emu3.vocab import Vocab

    return Vocab(pad=0, eol=40, eof=41, bos=42, eos=43, img=44, boi=45, eoi=46, visual_base=47, codebook_size=16)


def parse_cli(argv: list[str]):
    """`emu3`'s arguments as `main` sees them: parsed, the sampling flags settled."""
    from emu3.cli import build_parser, settle_sampling_flags

    args = build_parser().parse_args(argv)
    if hasattr(args, "greedy_default"):
        settle_sampling_flags(args)
    return args


def save_compact_model(folder: Path, compact, emu3_fixture: Path, *, std: float = 0.02, side: int = 32) -> Path:
    """A tiny random compact-vocabulary LM (`folder/model`, image area side*side) beside a tiny random
    vision tokenizer with 16 codes (`folder/vision-tokenizer`, fixed to side x side pictures)."""
    import torch

    from emu3 import checkpoint
    from emu3.config import lm_preset, vq_preset
    from emu3.model import Transformer
    from emu3.train.export import save_vision_tokenizer
    from emu3.vision import ImageProcessor, VisionTokenizer

    v = compact.vocab
    lm = Transformer(lm_preset("tiny", vocab_size=v.size, pad_token_id=v.pad, image_area=side * side))
    lm.init_weights(std, torch.Generator().manual_seed(0))
    checkpoint.save_lm(lm, folder / "model")
    compact.save(folder / "model", emu3_fixture / "Emu3-tiny" / "emu3.tiktoken")
    torch.manual_seed(0)
    vq = VisionTokenizer(vq_preset("tiny", codebook_size=16))
    save_vision_tokenizer(vq.state_dict(), vq.config, ImageProcessor(min_pixels=side * side, max_pixels=side * side),
                          folder / "vision-tokenizer")
    return folder / "model"


@pytest.fixture(scope="session")
def rand_lm():
    """A tiny random LM over `small_vocab()`, with weights wide enough to make decisions non-trivial."""
    import torch

    from emu3.config import lm_preset
    from emu3.model import Transformer

    model = Transformer(lm_preset("tiny", vocab_size=small_vocab().size, pad_token_id=0, max_position_embeddings=256))
    model.init_weights(std=0.3, generator=torch.Generator().manual_seed(0))
    return model.eval()


@pytest.fixture(scope="session")
def emu3_fixture() -> Path:
    """The tiny Emu3 checkpoint in the original format, with golden outputs of the original code."""
    if not EMU3_FIXTURE.is_dir():
        pytest.skip(f"parity fixture not found at {EMU3_FIXTURE}")
    return EMU3_FIXTURE


@pytest.fixture(scope="session")
def emu35_fixture() -> Path:
    """The tiny Emu3.5 checkpoint in the official formats, with golden outputs."""
    if not EMU35_FIXTURE.is_dir():
        pytest.skip(f"parity fixture not found at {EMU35_FIXTURE}")
    return EMU35_FIXTURE


@pytest.fixture(scope="session")
def golden(emu3_fixture: Path) -> dict:
    """golden.json of the Emu3 fixture."""
    import json

    return json.loads((emu3_fixture / "golden.json").read_text())


@pytest.fixture(scope="session")
def golden_tensors(emu3_fixture: Path) -> dict:
    """golden.safetensors of the Emu3 fixture."""
    from safetensors.torch import load_file

    return load_file(str(emu3_fixture / "golden.safetensors"))


@pytest.fixture(scope="session")
def tiny(emu3_fixture: Path):
    """The fixture's LM, tokenizer and vision tokenizer loaded once (fp32, CPU)."""
    from emu3.pipelines import Emu3

    return Emu3.load(emu3_fixture / "Emu3-tiny")


HF_NUM_LAYERS = 2


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory):
    """A tiny transformers `Emu3ForConditionalGeneration` with random weights, saved in the -hf format.

    The oracle for the -hf layout: returns (the transformers model in eval mode, its folder). The LM
    weights are drawn wider than transformers' init and the norms and BatchNorm statistics are
    randomised, so that a wrong mapping or a numerical difference cannot hide.
    """
    transformers = pytest.importorskip("transformers")
    import torch

    vq_config = dict(codebook_size=32768, embed_dim=4, latent_channels=4, base_channels=32,
                     channel_multiplier=[1, 2, 2, 4], num_res_blocks=1, attn_resolutions=[3],
                     hidden_size=32 * 4, num_attention_heads=1)  # hidden_size must be ch * ch_mult[-1]
    text_config = dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=HF_NUM_LAYERS,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                       pad_token_id=0, bos_token_id=1, eos_token_id=2)
    config = transformers.Emu3Config(vq_config=vq_config, text_config=text_config, vocabulary_map={"<image>": 5})
    torch.manual_seed(0)
    model = transformers.Emu3ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not name.startswith("model.vqmodel"):
                param.normal_(1.0 if name.endswith("norm.weight") else 0.0, 0.2)
        for module in model.model.vqmodel.modules():
            if isinstance(module, (torch.nn.GroupNorm, torch.nn.BatchNorm3d)):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.2)
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.normal_(0, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.num_batches_tracked.fill_(7)
    folder = tmp_path_factory.mktemp("emu3-hf")
    model.save_pretrained(folder)
    return model, folder
