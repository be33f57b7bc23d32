"""The server's knobs: limits on requests, the queue's size and batching, and event pacing.

One frozen dataclass, filled by `emu3 serve` flags or by tests. It checks its own values and
knows nothing of HTTP or the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

MiB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """Limits and pacing of one server. Every count and size must be positive."""

    model_name: str = "emu3"
    api_key: str | None = None           # when set, /v1/* needs `Authorization: Bearer <key>`; ASCII
    queue_size: int = 16                 # requests waiting (not yet running) before new ones get 503
    max_batch_images: int = 8            # images generated together in one model call (a memory cap)
    max_n: int = 4                       # images per generation request: one call, so <= max_batch_images
    max_prompt_chars: int = 2000         # an image prompt, a negative prompt, one chat message's text
    max_images: int = 4                  # images in one chat request (all turns)
    max_image_bytes: int = 10 * MiB      # one decoded image file
    max_image_pixels: int = 4096 * 4096  # one image's width x height, checked before decoding pixels
    max_body_bytes: int = 24 * MiB       # one request body
    max_new_tokens: int = 1024           # the most a chat answer may be asked for (and its default)
    progress_interval: float = 0.1       # seconds between progress events of a streamed job
    preview_interval: float = 1.0        # seconds between partial-image previews (0: every new row)
    keepalive_interval: float = 15.0     # seconds of silence before a stream sends an SSE comment

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("model_name", "api_key"):
                if value is not None and not value:
                    raise ValueError(f"{f.name} must not be empty")
                if f.name == "api_key" and value is not None and not (value.isascii() and value.isprintable()):
                    raise ValueError("api_key must be printable ASCII: HTTP clients send other characters in "
                                     "a header each their own way (Latin-1, UTF-8, or not at all)")
            elif f.name in ("progress_interval", "preview_interval"):
                if not (math.isfinite(value) and value >= 0):
                    raise ValueError(f"{f.name} must be a finite number >= 0, got {value}")
            elif value <= 0:
                raise ValueError(f"{f.name} must be > 0, got {value}")
        if self.max_n > self.max_batch_images:
            raise ValueError(f"max_n ({self.max_n}) must be at most max_batch_images ({self.max_batch_images}): "
                             f"a request's images are generated in one model call")
