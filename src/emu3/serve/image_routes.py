"""`POST /v1/images/generations`: OpenAI-compatible text-to-image, with an optional progress stream.

Checks the request against the server's limits and the model (ratio or size, prompt lengths and
the model's context), queues one `ImageJob`, and answers with the images as base64 PNG, or, with
`stream: true`, with server-sent events. It does not run the model: the worker does.
"""

from __future__ import annotations

import math
import re
import time

from fastapi import APIRouter, Request

from emu3.generation import SamplingConfig
from emu3.generation.constraints import image_token_count
from emu3.pipelines.text_to_image import default_prompts, default_sampling
from emu3.prompting import generation_prompt, grid_for_ratio
from emu3.serve import relay
from emu3.serve.errors import APIError
from emu3.serve.schemas import ImageData, ImageRequest, ImagesResponse
from emu3.serve.worker import ImageJob, ImageOutcome, ImageSpec, Worker

router = APIRouter()
_SIZE = re.compile(r"([0-9]{1,5})x([0-9]{1,5})")  # ASCII digits only, and few enough to make a sane int

STREAM_DOC = """With `"stream": true` the answer is `text/event-stream`, one JSON object per event:

* `image_generation.queued`: `position` (requests waiting before this one);
* `image_generation.progress`: `done`, `total` (generation steps), `fraction`, `grid` ([rows, columns]);
* `image_generation.partial_image`: `image_index`, `rows` (complete rows so far), `grid`, `b64_json`
  (a PNG of the rows done so far, full width), at most every preview interval;
* `image_generation.completed`: `image_index`, `b64_json`, `seed`, `revised_prompt`, `size`, one per image;
* `error`: `{"error": {...}}` as in error answers, instead of the completed events.
"""


@router.post("/v1/images/generations", response_model=ImagesResponse, summary="Generate images from a prompt",
             description=STREAM_DOC, responses={200: {"content": {"text/event-stream": {}}}})
async def create_images(body: ImageRequest, request: Request):
    worker: Worker = request.app.state.worker
    job = ImageJob(body.prompt, body.n, _spec(body, worker), body.seed, stream=body.stream)
    position = relay.submit(worker, job)
    created = int(time.time())
    if body.stream:
        queued = {"type": "image_generation.queued", "position": position}
        return relay.event_stream(job, worker, lambda event: _render(event, body.prompt, created),
                                  first=[relay.sse(queued, queued["type"])])
    outcome: ImageOutcome = await relay.result(job, request, worker)
    return ImagesResponse(created=created, size=_size(outcome), data=[
        ImageData(b64_json=b64, revised_prompt=body.prompt, seed=seed)
        for b64, seed in zip(outcome.images_b64, outcome.seeds)])


def _spec(body: ImageRequest, worker: Worker) -> ImageSpec:
    """Check the request against limits and the model; what its generation call needs."""
    settings, m = worker.settings, worker.m
    positive, negative = _around(body, m)
    for name, text in (("prompt", body.prompt), ("negative_prompt", negative), ("positive_prompt", positive)):
        if len(text) > settings.max_prompt_chars:
            raise APIError(400, f"'{name}' is {len(text)} characters, more than the limit of "
                                f"{settings.max_prompt_chars}", param=name, code="prompt_too_long")
    if body.n > settings.max_n:
        raise APIError(400, f"'n' is {body.n}, more than the limit of {settings.max_n}", param="n", code="n_too_large")
    ratio, param = _ratio(body)
    try:
        grid = grid_for_ratio(ratio, m.image_area, m.vq.spatial_factor)
    except ValueError as err:
        raise APIError(400, f"'{param}': {err}", param=param, code="unsupported_ratio") from None
    # text_to_image generates the image's tokens after the longer of the prompt and the negative prompt.
    image_tokens, context = image_token_count(*grid), m.lm.config.max_position_embeddings
    for name, text, suffix in (("prompt", body.prompt, positive), ("negative_prompt", negative, "")):
        needed = len(generation_prompt(m.tokenizer, text, grid, positive_prompt=suffix)) + image_tokens
        if needed > context:
            raise APIError(400, f"'{name}' is too long: with the {grid[0]}x{grid[1]} image the sequence is {needed} "
                                f"tokens, more than the model's context of {context}", param=name,
                           code="context_length_exceeded")
    plausibility = default_sampling(m).plausibility if body.plausibility is None else body.plausibility
    sampling = SamplingConfig(greedy=body.greedy, temperature=body.temperature, top_k=body.top_k, top_p=body.top_p,
                              plausibility=plausibility)
    return ImageSpec(ratio, body.cfg, positive, negative, sampling)


def _around(body: ImageRequest, m) -> tuple[str, str]:
    """(positive suffix, negative prompt): the request's, else the model's own (`default_prompts`)."""
    positive, negative = default_prompts(m)
    return (positive if body.positive_prompt is None else body.positive_prompt,
            negative if body.negative_prompt is None else body.negative_prompt)


def _ratio(body: ImageRequest) -> tuple[str, str]:
    """The 'W:H' ratio asked for, and the field it came from."""
    if body.size is not None and body.ratio is not None:
        raise APIError(400, "give 'size' or 'ratio', not both", param="size", code="conflicting_fields")
    if body.size is None or body.size == "auto":
        return body.ratio or "1:1", "ratio"
    match = _SIZE.fullmatch(body.size.lower())
    w, h = (int(match[1]), int(match[2])) if match else (0, 0)
    if not (w > 0 and h > 0):
        raise APIError(400, f"'size' must look like 'WxH' (e.g. 1024x1024) or 'auto', got {body.size!r}",
                       param="size", code="invalid_size")
    g = math.gcd(w, h)
    return f"{w // g}:{h // g}", "size"


def _size(outcome: ImageOutcome) -> str:
    return f"{outcome.size[0]}x{outcome.size[1]}"


def _render(event: dict, prompt: str, created: int) -> list[str]:
    """Server-sent events for one worker event."""
    kind = event["type"]
    if kind == "progress":
        data = {"type": "image_generation.progress", "done": event["done"], "total": event["total"],
                "fraction": round(event["done"] / event["total"], 4), "grid": event["grid"]}
        return [relay.sse(data, data["type"])]
    if kind == "preview":
        data = {"type": "image_generation.partial_image", "image_index": event["index"], "rows": event["rows"],
                "grid": event["grid"], "b64_json": event["b64_json"]}
        return [relay.sse(data, data["type"])]
    if kind == "result":
        outcome: ImageOutcome = event["outcome"]
        return [relay.sse({"type": "image_generation.completed", "image_index": i, "b64_json": b64, "seed": seed,
                           "revised_prompt": prompt, "size": _size(outcome), "created_at": created},
                          "image_generation.completed")
                for i, (b64, seed) in enumerate(zip(outcome.images_b64, outcome.seeds))]
    error = relay.as_api_error(event["error"])
    return [relay.sse({"type": "error", **error.body()}, "error")]
