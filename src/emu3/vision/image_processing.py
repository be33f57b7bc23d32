"""Images and frames in and out of the Emu3 vision tokenizer.

* `smart_resize`: the target size of an image (sides multiples of the spatial factor, area clamped
  to [min_pixels, max_pixels]), exactly as the official `Emu3VisionVQImageProcessor`.
* `ImageProcessor`: reads `preprocessor_config.json`; `preprocess` turns PIL images into
  (3, H, W) float32 tensors in [-1, 1]; `postprocess` turns decoded tensors back into PIL images.
  Both reproduce the official processor (transformers 4.44 image transforms) numerically: PIL
  bicubic resize of uint8 pixels, rescale in float64 then float32, normalise in float32, and on the
  way out truncation (not rounding) to uint8.
* `load_image`, `load_frames`: read an image, a folder of frames, an animated GIF/WebP or a video
  file (videos need PyAV or imageio, imported only when a video is read).

This module does not batch or pad images of different sizes, and does not touch the tokenizer or
the language model.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image, ImageSequence, UnidentifiedImageError

ImageLike = Union[Image.Image, str, Path]

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"})
MAX_ASPECT_RATIO = 5

# Keys of the official preprocessor_config.json that carry no information we need.
_IGNORED_KEYS = frozenset({"image_processor_type", "processor_class", "auto_map", "size"})
# Steps the official processor can switch off; every released config keeps them on.
_REQUIRED_FLAGS = ("do_convert_rgb", "do_resize", "do_rescale", "do_normalize")


def smart_resize(height: int, width: int, factor: int = 8, min_pixels: int = 512 * 512,
                 max_pixels: int = 1024 * 1024) -> tuple[int, int]:
    """The (height, width) an image is resized to: both multiples of `factor`, area within
    [min_pixels, max_pixels] (up to rounding), aspect ratio kept as closely as possible."""
    if height < factor or width < factor:
        raise ValueError(f"image of {height}x{width} (height x width) is too small: "
                         f"both sides must be at least {factor} pixels")
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT_RATIO:
        raise ValueError(f"image of {height}x{width} (height x width) has aspect ratio {ratio:.3g}; "
                         f"at most {MAX_ASPECT_RATIO} is supported")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def load_image(path: str | Path) -> Image.Image:
    """Open and fully read one image file; errors name the file."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not an image file")
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot read image file {path}: {err}") from err
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """`image` in RGB. PIL's own conversion clips 16-bit and 32-bit integer images at 255 (a washed-out
    white picture) and float images too (0.5 becomes black), so those are scaled to 8 bits first:
    16-bit modes ("I;16...") by 1/257; "I" (how 16-bit files may open) by 1/257 when any value is above
    255, else as they are; "F" by 255 when its values lie in [0, 1], else as they are. Values outside
    the 8-bit range are clipped. Always a new image."""
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16") or (image.mode == "I" and values.max(initial=0) > 255):
            values = values / 257
        elif image.mode == "F" and values.min(initial=0) >= 0 and values.max(initial=0) <= 1:
            values = values * 255
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")
    return image.convert("RGB")  # a copy even when RGB already: frames of a sequence share one object


def _read_video(path: Path) -> list[Image.Image]:
    try:
        import av
    except ImportError:
        av = None
    if av is not None:
        try:
            with av.open(str(path)) as container:
                return [frame.to_image() for frame in container.decode(video=0)]
        except Exception as err:  # PyAV raises its own error hierarchy
            raise ValueError(f"cannot read video file {path}: {err}") from err
    try:
        import imageio.v3 as iio
    except ImportError:
        raise ImportError(f"reading the video file {path} needs PyAV or imageio: "
                          f"pip install av (or: pip install 'imageio[pyav]')") from None
    try:
        return [Image.fromarray(np.asarray(frame)).convert("RGB") for frame in iio.imiter(path)]
    except Exception as err:  # imageio's plugins raise many error types
        raise ValueError(f"cannot read video file {path}: {err}") from err


def load_frames(path: str | Path) -> list[Image.Image]:
    """RGB frames from a folder of images (sorted by file name, so zero-pad frame numbers), an animated
    GIF/WebP (or any image file: a still image gives one frame), or a video file."""
    path = Path(path)
    if path.is_dir():
        known = set(Image.registered_extensions())
        files = sorted((p for p in path.iterdir() if p.is_file() and p.suffix.lower() in known), key=lambda p: p.name)
        if not files:
            raise ValueError(f"no image files in folder {path}")
        return [to_rgb(load_image(p)) for p in files]
    if not path.is_file():
        raise FileNotFoundError(f"frames not found: {path} is neither a folder nor a file")
    if path.suffix.lower() in VIDEO_SUFFIXES:
        frames = _read_video(path)
    else:
        image = load_image(path)
        try:
            frames = [to_rgb(frame) for frame in ImageSequence.Iterator(image)]
        except (OSError, ValueError, EOFError) as err:
            raise ValueError(f"cannot read the frames of {path}: {err}") from err
    if not frames:
        raise ValueError(f"no frames in {path}")
    return frames


@dataclass(frozen=True)
class ImageProcessor:
    """Resize and normalise images for the tokenizer (values of the released preprocessor_config.json)."""

    min_pixels: int = 512 * 512
    max_pixels: int = 1024 * 1024
    spatial_factor: int = 8
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5)
    rescale_factor: float = 1 / 255
    resample: int = int(Image.Resampling.BICUBIC)

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_mean", tuple(float(m) for m in self.image_mean))
        object.__setattr__(self, "image_std", tuple(float(s) for s in self.image_std))
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise ValueError(f"image_mean and image_std need 3 values (RGB), got {self.image_mean}, {self.image_std}")
        if any(s == 0 for s in self.image_std) or self.rescale_factor == 0:
            raise ValueError(f"image_std {self.image_std} and rescale_factor {self.rescale_factor} must be non-zero")
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got {self.min_pixels}, {self.max_pixels}")
        if self.resample not in {int(r) for r in Image.Resampling}:
            raise ValueError(f"resample {self.resample} is not a PIL resampling filter")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ImageProcessor":
        """From the contents of an official `preprocessor_config.json`."""
        data = dict(data)
        for flag in _REQUIRED_FLAGS:
            if not data.pop(flag, True):
                raise ValueError(f"{flag}=false is not supported (every released Emu3 processor sets it true)")
        size = data.get("size") or {}
        for key in ("min_pixels", "max_pixels"):
            if key not in data and key in size:
                data[key] = size[key]
        names = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - names - _IGNORED_KEYS)
        if unknown:
            warnings.warn(f"ignoring unknown image-processor keys {unknown}", stacklevel=2)
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def from_file(cls, path: str | Path) -> "ImageProcessor":
        """From a `preprocessor_config.json` file (or the folder that holds one)."""
        path = Path(path)
        if path.is_dir():
            path = path / "preprocessor_config.json"
        if not path.is_file():
            raise FileNotFoundError(f"image processor config not found: {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"corrupt image processor config {path}: {err}") from err
        if not isinstance(data, dict):
            raise ValueError(f"corrupt image processor config {path}: expected a JSON object")
        return cls.from_dict(data)

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) an image of this size is resized to."""
        return smart_resize(height, width, self.spatial_factor, self.min_pixels, self.max_pixels)

    def _preprocess_one(self, image: ImageLike, size: tuple[int, int] | None) -> torch.Tensor:
        if isinstance(image, (str, Path)):
            image = load_image(image)
        if not isinstance(image, Image.Image):
            raise TypeError(f"preprocess expects PIL images or image paths, got {type(image).__name__}")
        image = to_rgb(image)
        height, width = size or self.target_size(image.height, image.width)
        image = image.resize((width, height), resample=Image.Resampling(self.resample))
        pixels = np.asarray(image, dtype=np.uint8)  # (H, W, 3)
        x = (pixels.astype(np.float64) * self.rescale_factor).astype(np.float32)
        x = (x - np.asarray(self.image_mean, dtype=np.float32)) / np.asarray(self.image_std, dtype=np.float32)
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))  # (3, H, W)

    def preprocess(self, images: ImageLike | Sequence[ImageLike], size: tuple[int, int] | None = None
                   ) -> list[torch.Tensor]:
        """One image or a list -> a list of (3, H, W) float32 tensors in [-1, 1], each resized on its own:
        to `target_size`, or to `size` (height, width; multiples of `spatial_factor`) when given, which
        may lie outside min_pixels..max_pixels (a video's frames keep the grid its model draws)."""
        if size is not None and (min(size) < 1 or size[0] % self.spatial_factor or size[1] % self.spatial_factor):
            raise ValueError(f"size {size} must be positive multiples of the spatial factor {self.spatial_factor}")
        if isinstance(images, (Image.Image, str, Path)):
            images = [images]
        return [self._preprocess_one(image, size) for image in images]

    def postprocess(self, pixels: torch.Tensor) -> list[Image.Image]:
        """(..., 3, H, W) tensor in [-1, 1] -> a list of RGB PIL images (leading dims flattened)."""
        if not isinstance(pixels, torch.Tensor):
            raise TypeError(f"postprocess expects a torch.Tensor, got {type(pixels).__name__}")
        if pixels.ndim < 3 or pixels.shape[-3] != 3:
            raise ValueError(f"postprocess expects a (..., 3, H, W) tensor, got shape {tuple(pixels.shape)}")
        x = pixels.detach().to("cpu", torch.float32).reshape(-1, *pixels.shape[-3:]).numpy()  # (N, 3, H, W)
        # The inverse normalisation, written as the official processor does: normalise with -m/s and 1/s.
        inv_mean = np.asarray([-m / s for m, s in zip(self.image_mean, self.image_std)], dtype=np.float32)
        inv_std = np.asarray([1 / s for s in self.image_std], dtype=np.float32)
        x = (x - inv_mean[:, None, None]) / inv_std[:, None, None]
        x = (x.astype(np.float64) * (1 / self.rescale_factor)).astype(np.float32)
        x = x.clip(0, 255).astype(np.uint8)  # truncates, as the official processor does
        return [Image.fromarray(np.ascontiguousarray(frame.transpose(1, 2, 0))) for frame in x]


__all__ = ["ImageProcessor", "load_frames", "load_image", "smart_resize", "VIDEO_SUFFIXES"]
