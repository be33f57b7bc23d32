"""Emu3.5's models against the official code: the IBQ tokenizer's golden codes and pixels, the real
34B key layout, the real IBQ size, format detection and loading errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from emu3 import checkpoint
from emu3.checkpoint import CheckpointError, detect_family, load_ibq
from emu3.config import IBQConfig, ibq_preset, lm_preset
from emu3.model import Transformer
from emu3.vision.ibq import IBQ


@pytest.fixture(scope="module")
def golden(emu35_fixture):
    return load_file(str(emu35_fixture / "golden.safetensors"))


@pytest.fixture(scope="module")
def ibq(emu35_fixture):
    return load_ibq(emu35_fixture / "Emu3.5-VisionTokenizer-tiny")


def test_ibq_codes_match_the_official_code_exactly(ibq, golden):
    with torch.no_grad():
        codes = ibq.encode(golden["ibq_pixel_values"])
    assert codes.dtype == torch.int64 and torch.equal(codes, golden["ibq_codes"])


def test_ibq_decoded_pixels_match_the_official_code(ibq, golden):
    with torch.no_grad():
        pixels = ibq.decode(golden["ibq_codes"])
    torch.testing.assert_close(pixels, golden["ibq_decoded"], atol=1e-4, rtol=0)


def test_fixture_config_is_the_tiny_preset(ibq):
    assert ibq.config == ibq_preset("tiny") and ibq.spatial_factor == 16


def test_every_official_34b_key_maps_into_our_model_with_its_shape(emu35_fixture):
    (expected,) = json.loads((emu35_fixture / "emu35_state_dict_keys.json").read_text()).values()
    with torch.device("meta"):
        model = Transformer(lm_preset("emu3.5-34b"))
    ours = {k: list(t.shape) for k, t in model.state_dict().items()}
    assert ours == expected
    assert model.num_parameters() == sum(torch.Size(s).numel() for s in expected.values())  # 34.10B


def test_real_ibq_preset_has_the_published_size():
    with torch.device("meta"):
        model = IBQ(ibq_preset("emu3.5-ibq"))
    assert round(sum(p.numel() for p in model.parameters()) / 1e6) == 455  # paper section 2.3
    assert model.quantize.embedding.weight.shape == (131072, 256)


def test_family_is_detected_from_the_files(emu35_fixture, emu3_fixture, tmp_path):
    assert detect_family(emu35_fixture / "Emu3.5-tiny") == "emu3.5"
    assert detect_family(emu35_fixture / "Emu3.5-VisionTokenizer-tiny") == "emu3.5"
    assert detect_family(emu3_fixture / "Emu3-tiny") == "emu3"
    assert detect_family(emu3_fixture / "Emu3-VisionTokenizer-tiny") == "emu3"
    # An unusual vocabulary size: the q/k norms in the weights decide.
    lm = tmp_path / "lm"
    shutil.copytree(emu35_fixture / "Emu3.5-tiny", lm, ignore=shutil.ignore_patterns("*.tiktoken", "*.txt"))
    config = json.loads((lm / "config.json").read_text())
    (lm / "config.json").write_text(json.dumps({**config, "vocab_size": 1000}))
    assert detect_family(lm) == "emu3.5"
    assert checkpoint.find_ibq(emu35_fixture / "Emu3.5-tiny").name == "Emu3.5-VisionTokenizer-tiny"


def test_an_emu35_lm_without_its_qk_norms_is_refused_naming_the_file_and_keys(emu35_fixture, tmp_path):
    lm = shutil.copytree(emu35_fixture / "Emu3.5-tiny", tmp_path / "lm")
    weights = lm / "model.safetensors"
    weights.chmod(0o644)
    tensors = load_file(str(weights))
    save_file({k: t for k, t in tensors.items() if "_norm.weight" not in k or "self_attn" not in k}, str(weights))
    missing = r"4 missing keys \['model.layers.0.self_attn.k_norm.weight', 'model.layers.0.self_attn.q_norm"
    with pytest.raises(CheckpointError, match=f"model.safetensors does not match the model: {missing}"):
        checkpoint.load_lm(lm)


def test_ibq_config_reader_rejects_what_it_cannot_honour():
    base = {"ddconfig": {"ch": 32, "ch_mult": [1, 2], "z_channels": 8, "double_z": False}, "n_embed": 64,
            "embed_dim": 8, "beta": 0.25}
    assert IBQConfig.from_official(base).codebook_size == 64
    with pytest.raises(ValueError, match="double_z"):
        IBQConfig.from_official({**base, "ddconfig": {**base["ddconfig"], "double_z": True}})
    with pytest.raises(ValueError, match="l2_normalize"):
        IBQConfig.from_official({**base, "l2_normalize": True})
    with pytest.raises(ValueError, match="ddconfig"):
        IBQConfig.from_official({"n_embed": 64})
    with pytest.warns(UserWarning, match="mystery"):
        IBQConfig.from_official({**base, "mystery": 1})


def test_ibq_loading_errors_name_the_problem(emu35_fixture, tmp_path):
    folder = tmp_path / "ibq"
    shutil.copytree(emu35_fixture / "Emu3.5-VisionTokenizer-tiny", folder)
    (folder / "model.ckpt").chmod(0o644)
    (folder / "config.yaml").chmod(0o644)
    # A pickle that holds more than tensors is refused, never executed.
    torch.save({"state_dict": {"x": torch.zeros(1)}, "callback": IBQConfig()}, folder / "model.ckpt")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_ibq(folder)
    torch.save({"state_dict": {"encoder.conv_in.weight": torch.zeros(1)}}, folder / "model.ckpt")
    with pytest.raises(CheckpointError, match="missing keys"):
        load_ibq(folder)
    (folder / "config.yaml").write_text("ddconfig: [unclosed")
    with pytest.raises(CheckpointError, match="not valid YAML"):
        load_ibq(folder)
    with pytest.raises(CheckpointError, match="config.yaml is missing"):
        load_ibq(emu35_fixture / "Emu3.5-tiny")


def test_ibq_rejects_bad_inputs():
    model = IBQ(ibq_preset("tiny", codebook_size=16))
    with pytest.raises(ValueError, match="multiples of 16"):
        model.encode(torch.zeros(1, 3, 24, 32))
    with pytest.raises(ValueError, match="channels"):
        model.encode(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        model.decode(torch.full((1, 2, 2), 16))
    with pytest.raises(ValueError, match="integer"):
        model.decode(torch.zeros(1, 2, 2))
    assert model.decode(torch.zeros(1, 1, 2, dtype=torch.long)).shape == (1, 3, 16, 32)


def test_ibq_preprocessing_follows_the_official_formula():
    from PIL import Image

    from emu3.emu35.images import ibq_size, to_image, to_pixels

    assert ibq_size(96, 64, 96 * 64) == (64, 96)
    assert ibq_size(1000, 750, 720 * 720) == (624, 832)  # h = int(sqrt(area / ratio)) = 623 -> 624
    with pytest.raises(ValueError, match="too small"):
        ibq_size(96, 64, 16)
    with pytest.raises(ValueError, match="elongated"):
        ibq_size(600, 100, 4096)
    with pytest.raises(ValueError, match="image_area must be positive"):
        ibq_size(96, 64, -100)
    image = Image.new("RGB", (90, 60), (255, 0, 128))
    pixels = to_pixels(image, 96 * 64)
    assert pixels.shape == (3, 64, 96) and pixels.dtype == torch.float32
    assert pixels[:, 0, 0].tolist() == [1.0, -1.0, pytest.approx(128 / 127.5 - 1)]
    assert to_image(pixels).getpixel((0, 0)) == (255, 0, 128)


def test_emu3_load_picks_the_family(emu35_fixture, emu3_fixture):
    import emu3
    from emu3.emu35.bundle import Emu35

    assert isinstance(emu3.load(emu35_fixture / "Emu3.5-tiny"), Emu35)
    assert isinstance(emu3.load(emu3_fixture / "Emu3-tiny"), emu3.Emu3)
