"""The HTTP API on the tiny fixture model, in process: every endpoint, the OpenAI clients' request shapes,
streaming, every kind of bad input (a 4xx naming the field, and the server keeps serving), and auth."""

import base64
import io
import json
import struct

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from emu3.defaults import COMPACT_PLAUSIBILITY, TOP_K  # noqa: E402
from emu3.generation import SamplingConfig  # noqa: E402
from emu3.pipelines import answer, text_to_image  # noqa: E402
from emu3.serve.app import create_app  # noqa: E402
from emu3.serve.settings import Settings  # noqa: E402
from tests.conftest import save_compact_model  # noqa: E402

LIMITS = dict(progress_interval=0, preview_interval=0, max_n=3, max_prompt_chars=300, max_images=2,
              max_body_bytes=200_000, max_new_tokens=64)


@pytest.fixture(scope="module")
def client(tiny):
    with TestClient(create_app(tiny, Settings(model_name="emu3-tiny", **LIMITS))) as c:
        yield c


def data_uri(image: Image.Image, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buffer.getvalue()).decode()


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def events(response) -> list[tuple[str, dict | str]]:
    """(event name, data) of a server-sent-event stream; unnamed events are 'message'."""
    out = []
    for block in response.text.strip().split("\n\n"):
        lines = block.split("\n")
        if all(line.startswith(":") for line in lines):
            continue
        name = next((line[7:] for line in lines if line.startswith("event: ")), "message")
        data = "\n".join(line[6:] for line in lines if line.startswith("data: "))
        out.append((name, data if data == "[DONE]" else json.loads(data)))
    return out


@pytest.fixture(scope="module")
def photo(emu3_fixture) -> Image.Image:
    return Image.open(emu3_fixture / "input.png").convert("RGB")


# -- plain endpoints --------------------------------------------------------------------------------

def test_health_models_openapi_and_page(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == "emu3-tiny" and health["max_images"] == LIMITS["max_n"]
    assert health["queue"]["capacity"] == 16 and "batches" in health["stats"]
    assert client.get("/v1/models").json()["data"][0]["id"] == "emu3-tiny"
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/images/generations", "/v1/chat/completions", "/v1/models", "/health"} <= set(paths)
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset in page.text and client.get(asset).status_code == 200


# -- images -----------------------------------------------------------------------------------------

def test_images_match_the_pipeline_with_the_same_seeds(client, tiny):
    answer_ = client.post("/v1/images/generations", json={"prompt": "a red cube", "n": 2, "seed": 41})
    assert answer_.status_code == 200, answer_.text
    body = answer_.json()
    assert body["size"] == "64x64" and [d["seed"] for d in body["data"]] == [41, 42]
    assert all(d["revised_prompt"] == "a red cube" for d in body["data"])
    expected = text_to_image(tiny, "a red cube", seed=41, num_images=2).images
    for data, image in zip(body["data"], expected):
        assert np.array_equal(pixels(data["b64_json"]), np.asarray(image))


def test_images_default_to_the_models_own_prompts_and_sampling(emu3_fixture, tmp_path):
    """A compact-vocabulary model, trained without the official positive and negative prompts, is served
    without them and with its plausibility constraint, as `emu3 generate` runs it."""
    from emu3.compact_vocab import CompactTokenizer
    from emu3.pipelines import Emu3
    from emu3.tokenizer import Tokenizer

    compact = CompactTokenizer.build(Tokenizer.from_dir(emu3_fixture / "Emu3-tiny"), ["a red cube"], codebook_size=16)
    m = Emu3.load(save_compact_model(tmp_path, compact, emu3_fixture, std=0.3))
    with TestClient(create_app(m, Settings(**LIMITS))) as c:
        answers = [c.post("/v1/images/generations", json={"prompt": "a red cube", "seed": 5, **extra})
                   for extra in ({}, {"plausibility": 0.5})]
    assert all(a.status_code == 200 for a in answers), answers[0].text
    for answer_, plausibility in zip(answers, (COMPACT_PLAUSIBILITY, 0.5)):  # the model's own, then the request's
        sampling = SamplingConfig(top_k=TOP_K, plausibility=plausibility)
        expected = text_to_image(m, "a red cube", seed=5, positive_prompt="", negative_prompt="", sampling=sampling)
        assert np.array_equal(pixels(answer_.json()["data"][0]["b64_json"]), np.asarray(expected.images[0]))


def test_openai_images_request_shape(client):
    # What the OpenAI client sends for images.generate(model=..., prompt=..., n=1, size=..., response_format=...).
    shape = {"model": "dall-e-3", "prompt": "a lighthouse", "n": 1, "size": "1792x1024",
             "response_format": "b64_json", "quality": "standard", "style": "vivid", "user": "u1"}
    body = client.post("/v1/images/generations", json=shape).json()
    assert body["size"] == "88x48" and isinstance(body["created"], int)  # 7:4 -> the 16:9-like 6x11 grid
    assert pixels(body["data"][0]["b64_json"]).shape == (48, 88, 3)


def test_image_stream_reports_progress_rows_and_the_same_image(client):
    request = {"prompt": "a blue ball", "seed": 5, "ratio": "2:1", "stream": True}
    response = client.post("/v1/images/generations", json=request)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    stream = events(response)
    names = [name for name, _ in stream]
    assert names[0] == "image_generation.queued" and names[-1] == "image_generation.completed"
    fractions = [data["fraction"] for name, data in stream if name == "image_generation.progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) > 5
    partials = [data for name, data in stream if name == "image_generation.partial_image"]
    rows = [p["rows"] for p in partials]
    assert rows and rows == sorted(set(rows)) and all(r <= p["grid"][0] for r, p in zip(rows, partials))
    for p in partials:  # each preview is the full width and the rows done so far
        assert pixels(p["b64_json"]).shape[:2] == (p["rows"] * 8, p["grid"][1] * 8)
    final = stream[-1][1]
    plain = client.post("/v1/images/generations", json={**request, "stream": False}).json()["data"][0]
    assert final["seed"] == 5 and np.array_equal(pixels(final["b64_json"]), pixels(plain["b64_json"]))


# -- chat -------------------------------------------------------------------------------------------

def test_chat_answers_like_the_pipeline(client, tiny, photo):
    request = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in the picture?"},
        {"type": "image_url", "image_url": {"url": data_uri(photo)}}]}], "max_tokens": 12}
    body = client.post("/v1/chat/completions", json=request).json()
    expected = answer(tiny, [photo], "What is in the picture?", max_new_tokens=12)
    assert body["object"] == "chat.completion" and body["model"] == "emu3-tiny"
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": expected.text}
    assert choice["finish_reason"] == ("stop" if expected.token_ids[-1] == tiny.vocab.eos else "length")
    assert body["usage"]["completion_tokens"] == len(expected.token_ids)
    from emu3.prompting import Turn, chat_prompt
    prompt = chat_prompt(tiny.tokenizer, [Turn("What is in the picture?", [tiny.encode_image(photo)])])
    assert body["usage"]["prompt_tokens"] == len(prompt)


def test_openai_chat_request_shape_multi_turn_and_stream(client, photo):
    # What the OpenAI client sends for chat.completions.create(...), with a system message and history.
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_uri(photo, "JPEG"), "detail": "low"}},
            {"type": "text", "text": "Describe it."}]},
        {"role": "assistant", "content": "A small picture."},
        {"role": "user", "content": "And its colours?"},
    ]
    request = {"model": "gpt-4o", "messages": messages, "max_completion_tokens": 20, "temperature": 0, "seed": 1,
               "n": 1, "user": "u1"}
    plain = client.post("/v1/chat/completions", json=request)
    assert plain.status_code == 200, plain.text
    text = plain.json()["choices"][0]["message"]["content"]
    streamed = client.post("/v1/chat/completions",
                           json={**request, "stream": True, "stream_options": {"include_usage": True}})
    assert streamed.headers["content-type"].startswith("text/event-stream")
    chunks = [data for _, data in events(streamed)]
    assert chunks[-1] == "[DONE]"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks[:-1])
    pieces = [c["choices"][0]["delta"].get("content", "") for c in chunks[:-1] if c["choices"]]
    assert "".join(pieces) == text and len([p for p in pieces if p]) > 1
    assert chunks[-3]["choices"][0]["finish_reason"] == plain.json()["choices"][0]["finish_reason"]
    assert chunks[-2]["usage"] == plain.json()["usage"] and chunks[-2]["choices"] == []


# -- bad input --------------------------------------------------------------------------------------

def _chat_with(url: str) -> dict:
    return {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"},
                                                      {"type": "image_url", "image_url": {"url": url}}]}]}


def _png_bytes(size) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, "white").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


# A DDS header with a pixel format Pillow does not know: its decoder raises NotImplementedError.
DDS_UNKNOWN_FORMAT = b"DDS " + struct.pack("<7I44x8I20x", 124, 0x1007, 32, 32, 0, 0, 0, 32, 0x2000, 0, 0, 0, 0, 0, 0)
DDS_URI = "data:image/vnd-ms.dds;base64," + base64.b64encode(DDS_UNKNOWN_FORMAT).decode()

IMAGE = "/v1/images/generations"
CHAT = "/v1/chat/completions"
USER_HI = {"role": "user", "content": "hi"}
BAD = {
    "malformed json": (IMAGE, '{"prompt": "a cat",', 400, None),
    "not an object": (IMAGE, '["a cat"]', 400, None),
    "not sent as json": (IMAGE, {"prompt": "a cat"}, 400, None),
    "empty body": (IMAGE, "", 400, None),
    "prompt wrong type": (IMAGE, {"prompt": 3}, 400, "prompt"),
    "prompt missing": (IMAGE, {"n": 1}, 400, "prompt"),
    "prompt empty": (IMAGE, {"prompt": ""}, 400, "prompt"),
    "n as string": (IMAGE, {"prompt": "x", "n": "2"}, 400, "n"),
    "n over the limit": (IMAGE, {"prompt": "x", "n": 4}, 400, "n"),
    "n zero": (IMAGE, {"prompt": "x", "n": 0}, 400, "n"),
    "cfg negative": (IMAGE, {"prompt": "x", "cfg": -1}, 400, "cfg"),
    "plausibility of one": (IMAGE, {"prompt": "x", "plausibility": 1}, 400, "plausibility"),
    "seed negative": (IMAGE, {"prompt": "x", "seed": -1}, 400, "seed"),
    "top_p too big": (IMAGE, {"prompt": "x", "top_p": 1.5}, 400, "top_p"),
    "unknown field": (IMAGE, {"prompt": "x", "sed": 1}, 400, "sed"),
    "unknown field not an identifier": (IMAGE, {"prompt": "x", "negative-prompt": "y"}, 400, "negative-prompt"),
    "url format": (IMAGE, {"prompt": "x", "response_format": "url"}, 400, "response_format"),
    "ratio too extreme": (IMAGE, {"prompt": "x", "ratio": "9:1"}, 400, "ratio"),
    "ratio malformed": (IMAGE, {"prompt": "x", "ratio": "wide"}, 400, "ratio"),
    "size malformed": (IMAGE, {"prompt": "x", "size": "big"}, 400, "size"),
    "size too extreme": (IMAGE, {"prompt": "x", "size": "1024x100"}, 400, "size"),
    "size in superscript digits": (IMAGE, {"prompt": "x", "size": "\u00b2x\u00b2"}, 400, "size"),
    "size of 5000 digits": (IMAGE, {"prompt": "x", "size": "1" * 5000 + "x1"}, 400, "size"),
    "size and ratio": (IMAGE, {"prompt": "x", "size": "64x64", "ratio": "1:1"}, 400, "size"),
    "prompt over the limit": (IMAGE, {"prompt": "x" * 301}, 400, "prompt"),
    "negative prompt over the limit": (IMAGE, {"prompt": "x", "negative_prompt": "y" * 301}, 400, "negative_prompt"),
    "body over the limit": (IMAGE, {"prompt": "x" * 250_000}, 413, None),
    "messages missing": (CHAT, {}, 400, "messages"),
    "messages empty": (CHAT, {"messages": []}, 400, "messages"),
    "too many messages": (CHAT, {"messages": [USER_HI] * 257}, 400, "messages"),
    "content wrong type": (CHAT, {"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
    "content no parts": (CHAT, {"messages": [{"role": "user", "content": []}]}, 400, "messages[0].content"),
    "role unknown": (CHAT, {"messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role"),
    "part type unknown": (CHAT, {"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, 400,
                          "messages[0].content[0].type"),
    "text part without text": (CHAT, {"messages": [{"role": "user", "content": [{"type": "text"}]}]}, 400,
                               "messages[0].content[0]"),
    "non-image data uri": (CHAT, _chat_with("data:text/plain;base64,aGVsbG8="), 400,
                           "messages[0].content[1].image_url.url"),
    "corrupt image": (CHAT, _chat_with("data:image/png;base64," + base64.b64encode(b"\x89PNG garbage").decode()),
                      400, "messages[0].content[1].image_url.url"),
    "truncated image": (CHAT, _chat_with("data:image/png;base64," + _png_bytes((64, 64))[:120]), 400,
                        "messages[0].content[1].image_url.url"),
    "corrupt dds image": (CHAT, _chat_with(DDS_URI), 400, "messages[0].content[1].image_url.url"),
    "not base64": (CHAT, _chat_with("data:image/png;base64,@@@@"), 400, "messages[0].content[1].image_url.url"),
    "remote url": (CHAT, _chat_with("https://example.com/cat.png"), 400, "messages[0].content[1].image_url.url"),
    "image too small": (CHAT, _chat_with("data:image/png;base64," + _png_bytes((4, 4))), 400,
                        "messages[0].content[1].image_url.url"),
    "image too elongated": (CHAT, _chat_with("data:image/png;base64," + _png_bytes((120, 16))), 400,
                            "messages[0].content[1].image_url.url"),
    "too many images": (CHAT, {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + _png_bytes((32, 32))}}] * 3}]},
        400, "messages"),
    "message text over the limit": (CHAT, {"messages": [{"role": "user", "content": "x" * 301}]}, 400,
                                    "messages[0].content"),
    "last message not user": (CHAT, {"messages": [USER_HI, {"role": "assistant", "content": "x"}]}, 400, "messages"),
    "two users in a row": (CHAT, {"messages": [USER_HI, USER_HI]}, 400, "messages[1].role"),
    "system after user": (CHAT, {"messages": [USER_HI, {"role": "system", "content": "x"}]}, 400, "messages[1].role"),
    "image from the assistant": (CHAT, {"messages": [USER_HI, {"role": "assistant", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + _png_bytes((32, 32))}}]}, USER_HI]},
        400, "messages[1].content[0]"),
    "conversation over the context": (CHAT, {"messages": [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"{i} apples, " * 25} for i in range(11)]}, 400,
        "messages"),
    "max_tokens over the limit": (CHAT, {"messages": [USER_HI], "max_tokens": 65}, 400, "max_tokens"),
    "max_tokens zero": (CHAT, {"messages": [USER_HI], "max_tokens": 0}, 400, "max_tokens"),
    "n above one": (CHAT, {"messages": [USER_HI], "n": 2}, 400, "n"),
    "temperature wrong type": (CHAT, {"messages": [USER_HI], "temperature": "hot"}, 400, "temperature"),
    "stream wrong type": (CHAT, {"messages": [USER_HI], "stream": "yes"}, 400, "stream"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_4xx_naming_the_field(client, case):
    path, body, status, param = BAD[case]
    content = body if isinstance(body, str) else json.dumps(body)
    kind = "application/x-www-form-urlencoded" if case == "not sent as json" else "application/json"  # curl -d
    response = client.post(path, content=content, headers={"Content-Type": kind})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["message"] and error["type"] == "invalid_request_error"
    if param:
        assert param.split("[")[0].split(".")[0] in error["message"]


@pytest.mark.parametrize("path, field, value", [(IMAGE, "cfg", "NaN"), (IMAGE, "temperature", "Infinity"),
                                               (IMAGE, "top_p", "-Infinity"), (IMAGE, "plausibility", "NaN"),
                                               (CHAT, "temperature", "NaN"), (CHAT, "top_p", "Infinity")])
def test_a_number_that_is_not_finite_is_refused_as_such(client, path, field, value):
    base = '{"prompt": "x"' if path == IMAGE else '{"messages": [{"role": "user", "content": "hi"}]'
    response = client.post(path, content=f'{base}, "{field}": {value}}}', headers={"Content-Type": "application/json"})
    error = response.json()["error"]
    assert response.status_code == 400 and error["param"] == field
    assert error["message"] == f"field '{field}': Input should be a finite number"


@pytest.mark.parametrize("body, name", [
    ({"prompt": "x", "negative-prompt": "y"}, "negative-prompt"),
    ({"prompt": "x", "str": 1}, "str"),  # a key that looks like one of pydantic's union-branch tags
    ({"messages": [{**USER_HI, "top k": 1}]}, 'messages[0]["top k"]'),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image-url": {"url": "x"}}]}]},
     'messages[0].content[0]["image-url"]'),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x", "size": 1}}]}]},
     "messages[0].content[0].image_url.size"),
])
def test_an_unknown_field_is_named_whatever_its_name(client, body, name):
    error = client.post(CHAT if "messages" in body else IMAGE, json=body).json()["error"]
    assert (error["code"], error["param"], error["message"]) == ("unknown_field", name, f"unknown field '{name}'")


@pytest.mark.parametrize("case", ["corrupt image", "truncated image", "corrupt dds image"])
def test_an_unreadable_image_is_invalid_image(client, case):
    path, body, _, _ = BAD[case]
    response = client.post(path, json=body)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_image"


@pytest.mark.parametrize("size", ["\u00b2x\u00b2", "\u0664x\u0664", "1" * 5000 + "x1", "0x64", "64x"])
def test_a_size_that_is_not_ascii_w_x_h_is_invalid_size(client, size):
    response = client.post(IMAGE, json={"prompt": "x", "size": size})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_size"


def test_unknown_path_and_method_keep_the_error_shape(client):
    assert client.get("/v1/nothing").json()["error"]["type"] == "not_found_error"
    assert client.get(IMAGE).status_code == 405 and "error" in client.get(IMAGE).json()


def test_the_server_keeps_serving_after_bad_input(client):
    for body in ('{"prompt":', '{"prompt": 1}'):
        client.post(IMAGE, content=body, headers={"Content-Type": "application/json"})
    assert client.post(IMAGE, json={"prompt": "still here", "seed": 1}).status_code == 200
    assert client.get("/health").json()["stats"]["failed"] == 0


# -- auth -------------------------------------------------------------------------------------------

def test_api_key(tiny):
    with TestClient(create_app(tiny, Settings(api_key="s3cret", **LIMITS))) as c:
        missing = c.get("/v1/models")
        assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
        assert missing.json()["error"]["code"] == "invalid_api_key"
        assert c.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        # The key is checked before the body is even parsed.
        assert c.post(IMAGE, content="{", headers={"Content-Type": "application/json"}).status_code == 401
        assert c.post(CHAT, json={"messages": [USER_HI]}).status_code == 401
        assert c.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        good = c.post(IMAGE, json={"prompt": "x", "seed": 2}, headers={"Authorization": "Bearer s3cret"})
        assert good.status_code == 200
        assert c.get("/health").status_code == 200 and c.get("/").status_code == 200  # not secret


def test_a_16_bit_image_is_scaled_not_clipped():
    """PIL's convert("RGB") clipped 16-bit values at 255: a mid-grey picture arrived white."""
    from emu3.serve.media import image_from_data_uri
    from emu3.vision import ImageProcessor

    grey = Image.fromarray(np.full((16, 16), 32896, np.uint16))  # mode I;16, half of full scale
    image = image_from_data_uri(data_uri(grey), param="image_url", max_bytes=1 << 20, max_pixels=1 << 20,
                                processor=ImageProcessor(min_pixels=1, max_pixels=1 << 20, spatial_factor=1))
    assert image.mode == "RGB" and np.asarray(image).max() == 128
