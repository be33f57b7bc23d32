"""Request and response bodies of the HTTP API, as pydantic models (they also make the OpenAPI schema).

Requests follow the OpenAI images and chat-completions APIs, plus Emu3's own fields (ratio,
guidance, negative prompt, sampling). They are strict: a wrong JSON type is an error, never
coerced, a number must be finite (not NaN or Infinity), and an unknown field is an error naming it
(a typo is never silently ignored). A few OpenAI fields that do not apply (`model`, `user`,
`quality`, `style`) are accepted and ignored.
Limits that depend on the server's settings (prompt length, n, image counts) are checked by the
endpoints, not here. Streamed events are documented in the endpoint descriptions.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from emu3.defaults import GUIDANCE_SCALE, PLAUSIBILITY_HELP, TOP_K


MAX_MESSAGES = 256  # in one chat request; more than any conversation that fits a model's context


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)  # Python's json reads NaN


# -- images -----------------------------------------------------------------------------------------

class ImageRequest(_Request):
    prompt: str = Field(min_length=1, description="what to draw")
    n: int = Field(1, ge=1, description="number of images (at most the server's limit)")
    size: str | None = Field(None, description="'WxH' (sets the aspect ratio; the pixel count is the model's) "
                                               "or 'auto'; give size or ratio, not both")
    ratio: str | None = Field(None, description="aspect ratio 'W:H', default 1:1", examples=["16:9"])
    response_format: Literal["b64_json"] = Field("b64_json", description="only b64_json: the server keeps no files")
    negative_prompt: str | None = Field(None, description="what guidance steers away from (default: the official "
                                        "one; none for a compact-vocabulary model, trained without it)")
    positive_prompt: str | None = Field(None, description="suffix appended to the prompt (default: the official "
                                        "one; none for a compact-vocabulary model)")
    cfg: float = Field(GUIDANCE_SCALE, gt=0, le=100, description="classifier-free guidance scale")
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="image i of the request uses seed + i")
    greedy: bool = Field(False, description="take the most likely token instead of sampling")
    temperature: float = Field(1.0, gt=0, le=10)
    top_k: int | None = Field(TOP_K, ge=1)
    top_p: float | None = Field(None, gt=0, le=1)
    plausibility: float | None = Field(None, ge=0, lt=1, description=PLAUSIBILITY_HELP)
    stream: bool = Field(False, description="answer with server-sent events: progress, partial images, results")
    model: str | None = Field(None, description="accepted and ignored: the server serves one model")
    user: str | None = Field(None, description="accepted and ignored")
    quality: str | None = Field(None, description="accepted and ignored")
    style: str | None = Field(None, description="accepted and ignored")


class ImageData(BaseModel):
    b64_json: str = Field(description="a PNG file, base64-encoded")
    revised_prompt: str = Field(description="the prompt the image was generated from")
    seed: int


class ImagesResponse(BaseModel):
    created: int
    size: str = Field(description="'WxH' of the images in pixels")
    data: list[ImageData]


# -- chat -------------------------------------------------------------------------------------------

class ImageURL(_Request):
    url: str = Field(description="a base64 data URI: data:image/png;base64,...")
    detail: str | None = Field(None, description="accepted and ignored")


class ContentPart(_Request):
    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageURL | None = None

    @model_validator(mode="after")
    def _matches_type(self) -> "ContentPart":
        if self.type == "text" and (self.text is None or self.image_url is not None):
            raise ValueError("a 'text' part needs 'text' and no 'image_url'")
        if self.type == "image_url" and (self.image_url is None or self.text is not None):
            raise ValueError("an 'image_url' part needs 'image_url' and no 'text'")
        return self


class Message(_Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | Annotated[list[ContentPart], Field(min_length=1)]
    name: str | None = Field(None, description="accepted and ignored")


class StreamOptions(_Request):
    include_usage: bool = False


class ChatRequest(_Request):
    # The bound is checked before the items are, so a body of a million tiny messages is refused at once.
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES, description="optional system messages, "
                                    "then user and assistant turns alternating, ending with a user turn")
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1, description="default: the server's limit, within the context")
    max_completion_tokens: int | None = Field(None, ge=1, description="the newer name of max_tokens")
    temperature: float | None = Field(None, ge=0, le=10, description="unset or 0: greedy decoding")
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    n: int = Field(1, ge=1, le=1, description="only 1")
    model: str | None = Field(None, description="accepted and ignored: the server serves one model")
    user: str | None = Field(None, description="accepted and ignored")


class ChatMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int
    message: ChatMessage
    finish_reason: Literal["stop", "length"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


# -- the rest ---------------------------------------------------------------------------------------

class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "emu3"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    model: str
    max_images: int  # the most images one request may ask for (`n`)
    queue: dict
    stats: dict
