"""The vision tokenizer and image processing against the original implementation's golden outputs.

Golden tensors come from the tiny fixture (original code, fp32, CPU). The other tests are hermetic
checks of shapes, errors, smart_resize, postprocess and frame loading.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image, features
from safetensors.torch import load_file

from emu3.config import VQConfig, vq_preset
from emu3.vision import ImageProcessor, VisionTokenizer, load_frames, smart_resize, to_rgb

TOL = 1e-4


@pytest.fixture(scope="module")
def fixture_tokenizer(emu3_fixture):
    folder = emu3_fixture / "Emu3-VisionTokenizer-tiny"
    config = VQConfig.from_official(json.loads((folder / "config.json").read_text()))
    model = VisionTokenizer(config)
    model.load_state_dict(load_file(folder / "model.safetensors"), strict=True)
    return model


@pytest.fixture(scope="module")
def tiny_tokenizer():
    torch.manual_seed(0)
    return VisionTokenizer(vq_preset("tiny"))


# ---------------------------------------------------------------- parity with the original code

@torch.no_grad()
def test_image_codes_exact(fixture_tokenizer, golden_tensors):
    codes = fixture_tokenizer.encode(golden_tensors["vq_pixel_values"])
    assert codes.dtype == torch.int64 and codes.shape == golden_tensors["vq_codes"].shape == (1, 6, 8)
    assert torch.equal(codes, golden_tensors["vq_codes"])


@torch.no_grad()
def test_image_decode(fixture_tokenizer, golden_tensors):
    pixels = fixture_tokenizer.decode(golden_tensors["vq_codes"])
    assert pixels.shape == golden_tensors["vq_decoded"].shape == (1, 3, 48, 64)
    torch.testing.assert_close(pixels, golden_tensors["vq_decoded"], atol=TOL, rtol=0)


@torch.no_grad()
def test_video_codes_exact(fixture_tokenizer, golden_tensors):
    codes = fixture_tokenizer.encode(golden_tensors["video_pixel_values"])
    assert codes.shape == golden_tensors["video_codes"].shape == (1, 1, 6, 8)
    assert torch.equal(codes, golden_tensors["video_codes"])


@torch.no_grad()
def test_video_decode(fixture_tokenizer, golden_tensors):
    frames = fixture_tokenizer.decode(golden_tensors["video_codes"])
    assert frames.shape == golden_tensors["video_decoded"].shape == (1, 4, 3, 48, 64)
    torch.testing.assert_close(frames, golden_tensors["video_decoded"], atol=TOL, rtol=0)


def test_preprocess_matches_golden(emu3_fixture, golden_tensors):
    processor = ImageProcessor.from_file(emu3_fixture / "Emu3-VisionTokenizer-tiny" / "preprocessor_config.json")
    assert (processor.min_pixels, processor.max_pixels) == (1024, 4096)
    (pixels,) = processor.preprocess(emu3_fixture / "input.png")
    assert pixels.dtype == torch.float32
    torch.testing.assert_close(pixels, golden_tensors["vq_pixel_values"][0], atol=TOL, rtol=0)


# ---------------------------------------------------------------- the image shortcuts are exact rewrites

@torch.no_grad()
def test_image_path_equals_repeated_video(tiny_tokenizer):
    image = torch.rand(2, 3, 32, 24) * 2 - 1
    clip = image.unsqueeze(1).repeat(1, 4, 1, 1, 1)
    assert torch.equal(tiny_tokenizer.encode(image), tiny_tokenizer.encode(clip)[:, 0])
    codes = torch.randint(0, 32768, (2, 4, 3))
    torch.testing.assert_close(tiny_tokenizer.decode(codes), tiny_tokenizer.decode(codes[:, None])[:, 0],
                               atol=1e-5, rtol=0)


@torch.no_grad()
def test_video_shapes_and_batchnorm_stays_eval(tiny_tokenizer):
    before = {k: v.clone() for k, v in tiny_tokenizer.state_dict().items() if "running" in k or "batches" in k}
    codes = tiny_tokenizer.encode(torch.rand(1, 8, 3, 16, 16) * 2 - 1)
    assert codes.shape == (1, 2, 2, 2)
    assert tiny_tokenizer.decode(codes).shape == (1, 8, 3, 16, 16)
    assert not tiny_tokenizer.training
    after = tiny_tokenizer.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())


@torch.no_grad()
def test_bfloat16_module(tiny_tokenizer):
    model = VisionTokenizer(vq_preset("tiny")).to(torch.bfloat16)
    model.load_state_dict(tiny_tokenizer.state_dict())
    codes = model.encode(torch.rand(1, 3, 16, 16) * 2 - 1)  # float32 input is cast to the module's dtype
    assert codes.dtype == torch.int64 and codes.shape == (1, 2, 2)
    pixels = model.decode(codes)
    assert pixels.dtype == torch.bfloat16 and pixels.shape == (1, 3, 16, 16)


# ---------------------------------------------------------------- input errors

@pytest.mark.parametrize("shape, message", [
    ((3, 16, 16), "3-D"),
    ((1, 4, 16, 16), "channels"),
    ((1, 3, 12, 16), "multiples of 8"),
    ((1, 3, 3, 16, 16), "multiple of 4"),
])
def test_encode_errors(tiny_tokenizer, shape, message):
    with pytest.raises(ValueError, match=message):
        tiny_tokenizer.encode(torch.zeros(shape))


def test_encode_rejects_integer_pixels(tiny_tokenizer):
    with pytest.raises(ValueError, match="float"):
        tiny_tokenizer.encode(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))


@pytest.mark.parametrize("codes, message", [
    (torch.full((1, 2, 2), 32768), r"\[0, 32768\)"),
    (torch.full((1, 2, 2), -1), r"\[0, 32768\)"),
    (torch.zeros(2, 2, dtype=torch.long), "2-D"),
    (torch.zeros(1, 2, 2), "integer"),
])
def test_decode_errors(tiny_tokenizer, codes, message):
    with pytest.raises(ValueError, match=message):
        tiny_tokenizer.decode(codes)


# ---------------------------------------------------------------- smart_resize

@pytest.mark.parametrize("size, expected", [
    ((720, 720), (720, 720)),      # Emu3-Gen's 518400-pixel area, already inside [512^2, 1024^2]
    ((544, 960), (544, 960)),      # the 16:9 grid at area 518400
    ((100, 100), (512, 512)),      # too small: scaled up to min_pixels
    ((256, 256), (512, 512)),
    ((2000, 2000), (1024, 1024)),  # too large: scaled down to max_pixels
    ((1080, 1920), (768, 1360)),
    ((3000, 1000), (1768, 584)),
])
def test_smart_resize_defaults(size, expected):
    assert smart_resize(*size) == expected


def test_smart_resize_rounding_and_fixture_sizes():
    assert smart_resize(36, 36, 8, 1, 10**9) == (32, 32)  # round(4.5) == 4 (Python rounding)
    assert smart_resize(44, 44, 8, 1, 10**9) == (48, 48)  # round(5.5) == 6
    assert smart_resize(48, 64, 8, 1024, 4096) == (48, 64)
    assert smart_resize(10, 50) == (232, 1152)  # aspect ratio exactly 5 is allowed


@pytest.mark.parametrize("size, message", [((7, 100), "7x100.*at least 8"), ((10, 60), "10x60.*aspect ratio")])
def test_smart_resize_errors(size, message):
    with pytest.raises(ValueError, match=message):
        smart_resize(*size)


# ---------------------------------------------------------------- pre/post-processing

def test_postprocess_round_trip(emu3_fixture):
    image = Image.open(emu3_fixture / "input.png").convert("RGB")
    processor = ImageProcessor(min_pixels=1024, max_pixels=4096)
    (pixels,) = processor.preprocess(image)
    (back,) = processor.postprocess(pixels)
    diff = np.asarray(back, dtype=np.int16) - np.asarray(image, dtype=np.int16)
    # The original postprocess truncates to uint8, so a value can come back one lower, never higher.
    assert back.size == image.size and back.mode == "RGB"
    assert diff.max() == 0 and diff.min() >= -1


def test_postprocess_values_and_shapes():
    processor = ImageProcessor()
    values = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0]).view(1, 1, 5).expand(3, 1, 5)
    (image,) = processor.postprocess(values)
    assert np.asarray(image)[0, :, 0].tolist() == [0, 0, 127, 255, 255]
    assert len(processor.postprocess(torch.zeros(2, 4, 3, 8, 8))) == 8
    with pytest.raises(ValueError, match="3, H, W"):
        processor.postprocess(torch.zeros(4, 8, 8))


def test_preprocess_resizes_each_image():
    processor = ImageProcessor(min_pixels=1024, max_pixels=4096)
    out = processor.preprocess([Image.new("RGB", (64, 48), (255, 0, 0)), Image.new("L", (20, 20), 0)])
    assert [tuple(x.shape) for x in out] == [(3, 48, 64), (3, 32, 32)]
    assert out[0][0].eq(1).all() and out[0][1].eq(-1).all() and out[1].eq(-1).all()


def test_processor_config_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        ImageProcessor.from_file(tmp_path / "missing.json")
    bad = tmp_path / "preprocessor_config.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="preprocessor_config.json"):
        ImageProcessor.from_file(tmp_path)
    with pytest.raises(ValueError, match="do_resize"):
        ImageProcessor.from_dict({"do_resize": False})


def test_image_file_errors(tmp_path):
    processor = ImageProcessor()
    with pytest.raises(FileNotFoundError, match="nope.png"):
        processor.preprocess(tmp_path / "nope.png")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="corrupt.png"):
        processor.preprocess(str(corrupt))
    with pytest.raises(ValueError, match="corrupt.png"):
        load_frames(corrupt)
    with pytest.raises(ValueError, match="is a folder, not an image file"):
        processor.preprocess(tmp_path)


def test_an_image_over_the_decompression_limit_is_named(tmp_path, monkeypatch):
    huge = tmp_path / "huge.png"
    Image.new("RGB", (64, 64)).save(huge)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL refuses more than twice this many pixels
    with pytest.raises(ValueError, match="cannot read image file .*huge.png"):
        ImageProcessor().preprocess(huge)


# ---------------------------------------------------------------- frames

def _colors(frames):
    return [frame.getpixel((0, 0)) for frame in frames]


def test_load_frames_folder_sorted(tmp_path):
    for name, color in [("f2.png", (0, 0, 255)), ("f0.png", (255, 0, 0)), ("f1.jpg", (0, 255, 0))]:
        Image.new("RGB", (8, 8), color).save(tmp_path / name, quality=100)
    (tmp_path / "notes.txt").write_text("not a frame")
    frames = load_frames(tmp_path)
    assert len(frames) == 3 and all(f.mode == "RGB" for f in frames)
    assert _colors(frames)[0] == (255, 0, 0) and _colors(frames)[2] == (0, 0, 255)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        load_frames(tmp_path / "empty")


@pytest.mark.parametrize("array, expected", [
    (np.array([[0, 32896, 65535]], np.uint16), [0, 128, 255]),  # "I;16": PIL's convert gave 0, 255, 255
    (np.array([[0, 32896, 65535]], np.int32), [0, 128, 255]),  # "I" holding 16-bit values
    (np.array([[0, 128, 255]], np.int32), [0, 128, 255]),  # "I" holding 8-bit values
    (np.array([[0.0, 0.5, 1.0]], np.float32), [0, 128, 255]),  # "F" in [0, 1]: PIL's convert gave 0, 0, 1
    (np.array([[-3.0, 127.6, 300.0]], np.float32), [0, 128, 255]),  # "F" on the 8-bit scale
])
def test_high_depth_images_become_8_bit_rgb(tmp_path, array, expected):
    rgb = to_rgb(Image.fromarray(array))
    assert rgb.mode == "RGB" and np.asarray(rgb)[0, :, 0].tolist() == expected
    Image.fromarray(array.astype(np.uint16) if array.dtype == np.uint16 else array).save(tmp_path / "deep.tiff")
    assert np.asarray(load_frames(tmp_path / "deep.tiff")[0])[0, :, 0].tolist() == expected
    pixels = ImageProcessor(min_pixels=1, max_pixels=64, spatial_factor=1).preprocess([Image.fromarray(array)])[0]
    assert pixels.amax().item() > 0.9  # white stays white


@pytest.mark.parametrize("suffix", [".gif", ".webp"])
def test_load_frames_animated(tmp_path, suffix):
    if suffix == ".webp" and not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    images = [Image.new("RGB", (8, 8), c) for c in colors]
    path = tmp_path / f"anim{suffix}"
    images[0].save(path, save_all=True, append_images=images[1:], duration=100, lossless=True)
    frames = load_frames(path)
    assert _colors(frames) == colors


def test_load_frames_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        load_frames(tmp_path / "missing_dir")
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00" * 64)
    monkeypatch.setitem(sys.modules, "av", None)
    monkeypatch.setitem(sys.modules, "imageio", None)
    monkeypatch.setitem(sys.modules, "imageio.v3", None)
    with pytest.raises(ImportError, match="pip install av"):
        load_frames(video)
