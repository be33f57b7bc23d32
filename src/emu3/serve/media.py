"""Images in and out of the API: `data:` URIs to checked PIL images, PIL images to base64 PNG.

An input image must be a base64 `data:image/...` URI (the server never fetches URLs), at most
`max_bytes` once decoded and `max_pixels` in area (checked from the header, before pixels are
decoded), fully readable, and of a size and aspect ratio the vision tokenizer accepts. Every
failure is an `APIError` naming the field. This module does not encode images into tokens.
"""

from __future__ import annotations

import base64
import binascii
import io

from PIL import Image, UnidentifiedImageError

from emu3.serve.errors import APIError
from emu3.vision import ImageProcessor, smart_resize, to_rgb


def image_from_data_uri(uri: str, *, param: str, max_bytes: int, max_pixels: int,
                        processor: ImageProcessor) -> Image.Image:
    """The RGB image in a base64 data URI, or an APIError (400) about `param`."""
    def bad(message: str, code: str) -> APIError:
        return APIError(400, f"{param}: {message}", param=param, code=code)

    if not uri.startswith("data:"):
        shown = uri[:40] + ("..." if len(uri) > 40 else "")
        raise bad(f"only base64 data URIs (data:image/png;base64,...) are accepted; this server does not fetch "
                  f"URLs, got {shown!r}", "unsupported_image_url")
    header, comma, payload = uri[5:].partition(",")
    mime, *options = header.split(";")
    if not comma or "base64" not in options:
        raise bad("the data URI must be base64-encoded (data:image/png;base64,...)", "invalid_data_uri")
    if not mime.lower().startswith("image/"):
        raise bad(f"the data URI holds {mime or 'data of no named type'}, not an image", "not_an_image")
    if len(payload) > (max_bytes + 2) // 3 * 4 + 4:
        raise bad(f"the image is larger than the limit of {max_bytes} bytes", "image_too_large")
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as err:
        raise bad(f"the data URI is not valid base64 ({err})", "invalid_base64") from None
    try:
        image = Image.open(io.BytesIO(raw))
        width, height = image.size
        if width * height > max_pixels:
            raise bad(f"the image is {width}x{height}, more than the limit of {max_pixels} pixels", "image_too_large")
        image = to_rgb(image)  # loads the pixels; 16-bit and float images scaled, not clipped
    except APIError:
        raise
    except UnidentifiedImageError:
        raise bad("not a readable image: its bytes are in no image format the server knows", "invalid_image") from None
    except Exception as err:  # noqa: BLE001 - Pillow's decoders fail on bad bytes with many types (OSError,
        # SyntaxError, ValueError, NotImplementedError for an unknown DDS pixel format, struct.error, ...)
        raise bad(f"not a readable image ({type(err).__name__}: {err})", "invalid_image") from None
    try:
        smart_resize(height, width, processor.spatial_factor, processor.min_pixels, processor.max_pixels)
    except ValueError as err:
        raise bad(str(err), "unsupported_image_size") from None
    return image


def png_base64(image: Image.Image) -> str:
    """The image as a base64-encoded PNG file."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
