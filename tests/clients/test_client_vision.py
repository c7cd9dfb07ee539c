"""Images from the real clients (ollama, openai, LangChain, LlamaIndex) to the tiny vision model on the CPU
backend: answers depend on the image; bad images get a clear 4xx and the server keeps serving."""

from __future__ import annotations

import base64
import io
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import ollama
import openai
import pytest
from client_support import Served

N = 12  # tokens per answer: enough for two images to part ways
OPTS = {"temperature": 0, "num_predict": N}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _url(data: bytes) -> str:
    return "data:image/png;base64," + _b64(data)


@pytest.mark.fields("ollama.GenerateRequest.images", "ollama.ChatMessage.images")
def test_ollama_generate_and_chat_answers_depend_on_the_image(vision_served: Served, sample_images,
                                                              tiny_projector, tmp_path) -> None:
    c = ollama.Client(host=vision_served.url)
    red, grad = sample_images["red"], sample_images["gradient"]
    a = c.generate(model="tiny-vision", prompt="what is this", images=[red], options=OPTS)
    b = c.generate(model="tiny-vision", prompt="what is this", images=[grad], options=OPTS)
    assert a.response != b.response
    assert a.context is None  # context tokens cannot carry the image, so none are offered
    # prompt_eval_count counts the image's tokens: a raw prompt with and without it differs by exactly those.
    raw = c.generate(model="tiny-vision", prompt="[img]what is this", images=[red], raw=True, options=OPTS)
    text_only = c.generate(model="tiny-vision", prompt="what is this", raw=True, options=OPTS)
    assert raw.prompt_eval_count == text_only.prompt_eval_count + tiny_projector.n_image_tokens
    path = tmp_path / "red.png"
    path.write_bytes(red)
    again = c.generate(model="tiny-vision", prompt="what is this", images=[path], options=OPTS)
    assert again.response == a.response  # a path, bytes or base64: the same image

    msgs = [{"role": "user", "content": "what is this", "images": [red]}]
    r1 = c.chat(model="tiny-vision", messages=msgs, options=OPTS)
    r2 = c.chat(model="tiny-vision", messages=[{**msgs[0], "images": [grad]}], options=OPTS)
    assert r1.message.content != r2.message.content
    streamed = "".join(p.message.content for p in c.chat(model="tiny-vision", messages=msgs, options=OPTS,
                                                         stream=True))
    assert streamed == r1.message.content
    # The next turn keeps the image in the history and reuses its evaluated prefix.
    follow = [*msgs, {"role": "assistant", "content": r1.message.content},
              {"role": "user", "content": "and?"}]
    r3 = c.chat(model="tiny-vision", messages=follow, options=OPTS)
    assert r3.prompt_eval_count > r1.prompt_eval_count and r3.done
    assert "vision" in c.show("tiny-vision").capabilities and "vision" not in c.show("tiny").capabilities


@pytest.mark.fields("openai.ContentPart.image_url", "openai.ImageURL.url")
def test_openai_image_url_parts(vision_served: Served, sample_images) -> None:
    c = openai.OpenAI(base_url=vision_served.url + "/v1/", api_key="corral", max_retries=0)

    def ask(image: bytes) -> str:
        r = c.chat.completions.create(model="tiny-vision", max_tokens=N, temperature=0, messages=[
            {"role": "user", "content": [{"type": "text", "text": "what is this"},
                                         {"type": "image_url", "image_url": {"url": _url(image)}}]}])
        return r.choices[0].message.content or ""

    assert ask(sample_images["red"]) != ask(sample_images["gradient"])
    with pytest.raises(openai.BadRequestError, match="CORRAL_FETCH_IMAGES"):
        c.chat.completions.create(model="tiny-vision", max_tokens=2, messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/x.png"}}]}])
    wav = b"RIFF" + struct.pack("<I", 36) + b"WAVEfmt " + b"\x00" * 24
    with pytest.raises(openai.BadRequestError, match="does not support audio"):
        c.chat.completions.create(model="tiny-vision", max_tokens=2, messages=[
            {"role": "user", "content": [{"type": "input_audio",
                                          "input_audio": {"data": _b64(wav), "format": "wav"}}]}])


def test_gif_and_bmp_read_as_the_same_pixels_as_png(vision_served: Served, sample_images) -> None:
    """The same flat red picture as PNG, GIF (one palette colour: exact) and BMP, top-down and bottom-up:
    decoded to the same pixels, so the same greedy answer."""
    from PIL import Image

    picture = Image.open(io.BytesIO(sample_images["red"])).convert("RGB")
    encoded = {}
    for fmt in ("GIF", "BMP"):
        buf = io.BytesIO()
        picture.save(buf, format=fmt)
        encoded[fmt] = buf.getvalue()
    bmp = encoded["BMP"]
    # the same BMP stored top-down: a negative height, rows in reading order
    width, height = struct.unpack("<ii", bmp[18:26])
    offset, stride = struct.unpack("<I", bmp[10:14])[0], (width * 3 + 3) & ~3
    rows = [bmp[offset + r * stride: offset + (r + 1) * stride] for r in range(height)]
    encoded["BMP top-down"] = bmp[:22] + struct.pack("<i", -height) + bmp[26:offset] + b"".join(rows[::-1])
    c = ollama.Client(host=vision_served.url)
    want = c.generate(model="tiny-vision", prompt="what is this", images=[sample_images["red"]], options=OPTS)
    for name, data in encoded.items():
        got = c.generate(model="tiny-vision", prompt="what is this", images=[data], options=OPTS)
        assert got.response == want.response, name

def test_anthropic_and_responses_images_reach_the_model(vision_served: Served, sample_images,
                                                        tiny_projector) -> None:
    """The agent APIs' image blocks (Anthropic base64 sources, Responses input_image data URIs) reach the
    model: answers depend on the image and the prompt counts its tokens."""
    import anthropic

    ac = anthropic.Anthropic(base_url=vision_served.url, api_key="corral", max_retries=0)

    def claude(image: bytes) -> tuple[str, int]:
        r = ac.messages.create(model="tiny-vision", max_tokens=N, messages=[  # the model says temperature 0
            {"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": _b64(image)}},
                {"type": "text", "text": "what is this"}]}])
        prompt = r.usage.input_tokens + (r.usage.cache_read_input_tokens or 0)  # cached ones apart
        return "".join(b.text for b in r.content if b.type == "text"), prompt

    (red_text, red_in), (grad_text, grad_in) = claude(sample_images["red"]), claude(sample_images["gradient"])
    assert red_text != grad_text and red_in == grad_in > tiny_projector.n_image_tokens
    with pytest.raises(anthropic.BadRequestError, match="does not support vision"):
        ac.messages.create(model="tiny", max_tokens=2, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": _b64(sample_images["red"])}}]}])

    oc = openai.OpenAI(base_url=vision_served.url + "/v1/", api_key="corral", max_retries=0)

    def respond(image: bytes) -> tuple[str, int]:
        r = oc.responses.create(model="tiny-vision", max_output_tokens=N, temperature=0, input=[
            {"role": "user", "content": [{"type": "input_text", "text": "what is this"},
                                         {"type": "input_image", "image_url": _url(image),
                                          "detail": "auto"}]}])
        assert r.usage is not None
        return r.output_text, r.usage.input_tokens

    (red_text, red_in), (grad_text, _) = respond(sample_images["red"]), respond(sample_images["gradient"])
    assert red_text != grad_text
    without = oc.responses.create(model="tiny-vision", max_output_tokens=N, temperature=0, input=[
        {"role": "user", "content": [{"type": "input_text", "text": "what is this"}]}])
    assert without.usage is not None and red_in > without.usage.input_tokens

def test_remote_image_urls_are_fetched_when_the_operator_allows(tmp_path_factory, tiny_gguf, tiny_projector,
                                                                sample_images) -> None:
    from pathlib import Path

    from client_support import vision_server

    class Images(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = {"/red.png": sample_images["red"], "/big.png": b"\x89PNG" + b"\x00" * 4096}.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: object) -> None:
            pass

    images = ThreadingHTTPServer(("127.0.0.1", 0), Images)
    threading.Thread(target=images.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{images.server_address[1]}"
    srv = vision_server(tmp_path_factory.mktemp("fetch"), tiny_gguf, Path(tiny_projector.path),
                        fetch_images=True, max_media_size=2048)
    try:
        c = openai.OpenAI(base_url=srv.url + "/v1/", api_key="corral", max_retries=0)

        def ask(url: str) -> str:
            r = c.chat.completions.create(model="tiny-vision", max_tokens=N, temperature=0, messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}])
            return r.choices[0].message.content or ""

        assert ask(f"{base}/red.png") == ask(_url(sample_images["red"]))
        with pytest.raises(openai.BadRequestError, match="HTTP 404"):
            ask(f"{base}/missing.png")
        with pytest.raises(openai.BadRequestError, match="larger than 2048 bytes"):
            ask(f"{base}/big.png")
    finally:
        srv.stop()
        images.shutdown()


def test_langchain_and_llama_index_send_images(vision_served: Served, sample_images) -> None:
    from langchain_core.messages import HumanMessage
    from langchain_ollama import ChatOllama
    from llama_index.core.base.llms.types import ChatMessage, ImageBlock, TextBlock
    from llama_index.llms.ollama import Ollama

    llm = ChatOllama(model="tiny-vision", base_url=vision_served.url, temperature=0, num_predict=N)

    def lc(image: bytes) -> str:
        msg = HumanMessage(content=[{"type": "text", "text": "what is this"},
                                    {"type": "image_url", "image_url": {"url": _url(image)}}])
        return str(llm.invoke([msg]).content)

    assert lc(sample_images["red"]) != lc(sample_images["gradient"])

    li = Ollama(model="tiny-vision", base_url=vision_served.url, request_timeout=60, context_window=512,
                temperature=0, additional_kwargs={"num_predict": N})

    def index(image: bytes) -> str:
        msg = ChatMessage(role="user", blocks=[TextBlock(text="what is this"), ImageBlock(image=image)])
        return str(li.chat([msg]).message.content)

    assert index(sample_images["red"]) != index(sample_images["gradient"])


def test_langchain_standard_image_input_tests_pass(vision_served: Served, monkeypatch) -> None:
    """langchain-tests' own image-input tests for ChatOllama. They download a diagram from GitHub; this
    machine has no network, so that one download is answered with a local PNG of similar size."""
    import langchain_tests.integration_tests.chat_models as standard
    from langchain_ollama import ChatOllama
    from langchain_tests.integration_tests import ChatModelIntegrationTests
    from PIL import Image

    picture = Image.new("RGB", (320, 200))
    picture.putdata([((x * 3) % 256, (y * 5) % 256, (x ^ y) % 256) for y in range(200) for x in range(320)])
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    monkeypatch.setattr(standard.httpx, "get", lambda url, **kw: httpx.Response(200, content=buf.getvalue()))

    class ChatOllamaImages(ChatModelIntegrationTests):
        @property
        def chat_model_class(self) -> type[ChatOllama]:
            return ChatOllama

        @property
        def chat_model_params(self) -> dict[str, object]:
            return {"model": "tiny-vision-tools", "base_url": vision_served.url, "temperature": 0,
                    "num_predict": 8}

        @property
        def supports_image_inputs(self) -> bool:
            return True

        @property
        def supports_image_tool_message(self) -> bool:
            return True

    suite = ChatOllamaImages()
    model = ChatOllama(**{**suite.standard_chat_model_params, **suite.chat_model_params})
    suite.test_image_inputs(model)
    suite.test_image_tool_message(model)


def test_bad_images_get_a_clear_4xx_and_the_server_keeps_serving(vision_served: Served,
                                                                  sample_images) -> None:
    red = sample_images["red"]
    bomb = red[:16] + struct.pack(">II", 100_000, 100_000) + red[24:]
    big = b"\x89PNG\r\n\x1a\n" + b"\x00" * (20 * 1024 * 1024)
    cases = [
        ("tiny-vision", [b"definitely not an image"], 400, "not a PNG, JPEG, GIF or BMP"),
        ("tiny-vision", [red[: len(red) // 2]], 400, "damaged"),
        ("tiny-vision", [bomb], 400, "pixels"),
        ("tiny-vision", [big], 400, "the limit is 16.0 MiB"),
        ("tiny-vision", [red] * 100, 400, "holds 100 images"),
        ("tiny", [red], 400, "does not support vision"),
    ]
    with httpx.Client(base_url=vision_served.url, timeout=120) as http:
        for model, imgs, status, message in cases:
            encoded = [_b64(i) for i in imgs]
            for path, body in (("/api/generate", {"prompt": "what is this", "images": encoded}),
                               ("/api/chat", {"messages": [{"role": "user", "content": "what is this",
                                                             "images": encoded}]})):
                r = http.post(path, json={"model": model, "stream": False, **body})
                assert r.status_code == status and message in r.json()["error"], (path, message, r.text)
                assert http.get("/api/version").status_code == 200
        r = http.post("/api/generate", json={"model": "tiny-vision", "prompt": "what is this",
                                             "stream": False, "images": [_b64(red)], "options": OPTS})
        assert r.status_code == 200 and r.json()["eval_count"] == N


def test_images_beyond_the_context_get_a_400_on_every_api(vision_served: Served, sample_images,
                                                          tiny_projector) -> None:
    """Each image takes its tokens whole (never cut to fit): too many for num_ctx is the context 400, streamed
    or not, and the model keeps serving."""
    red = sample_images["red"]
    n = 512 // tiny_projector.n_image_tokens  # the served context is 512: these fill it before any text
    with httpx.Client(base_url=vision_served.url, timeout=120) as http:
        for stream in (False, True):
            r = http.post("/api/generate", json={"model": "tiny-vision", "prompt": "what is this",
                                                 "stream": stream, "images": [_b64(red)] * n})
            assert r.status_code == 400 and "longer than the context length" in r.json()["error"], r.text
            r = http.post("/api/chat", json={"model": "tiny-vision", "stream": stream,
                                             "options": {"num_ctx": 64},
                                             "messages": [{"role": "user", "content": "what is this",
                                                           "images": [_b64(red)] * 4}]})
            assert r.status_code == 400 and "longer than the context length" in r.json()["error"], r.text
    c = openai.OpenAI(base_url=vision_served.url + "/v1/", api_key="corral", max_retries=0)
    # One message's parts become messages of their own (as in Ollama), but history truncation keeps
    # them together: no image of the question is dropped to make it fit.
    question = [{"role": "user", "content": [{"type": "text", "text": "what are these"},
                                             *[{"type": "image_url", "image_url": {"url": _url(red)}}] * n]}]
    with pytest.raises(openai.BadRequestError, match="longer than the context length"):
        c.chat.completions.create(model="tiny-vision", max_tokens=2, messages=question)
    with pytest.raises(openai.BadRequestError, match="longer than the context length"):
        list(c.chat.completions.create(model="tiny-vision", max_tokens=2, stream=True, messages=question))
    r = ollama.Client(host=vision_served.url).generate(model="tiny-vision", prompt="what is this",
                                                        images=[red], options=OPTS)
    assert r.eval_count == N


def test_bad_image_urls_get_a_clear_400_from_the_openai_api(vision_served: Served, sample_images) -> None:
    c = openai.OpenAI(base_url=vision_served.url + "/v1/", api_key="corral", max_retries=0)
    red = sample_images["red"]

    def ask(model: str, url: str) -> None:
        c.chat.completions.create(model=model, max_tokens=2, messages=[
            {"role": "user", "content": [{"type": "text", "text": "what is this"},
                                         {"type": "image_url", "image_url": {"url": url}}]}])

    cases = [
        ("tiny-vision", "data:image/png;base64,!!not base64!!", "not valid base64"),
        ("tiny-vision", _url(b"definitely not an image"), "not a PNG, JPEG, GIF or BMP"),
        ("tiny-vision", _url(red[: len(red) // 2]), "damaged"),
        ("tiny-vision", _url(red[:16] + struct.pack(">II", 100_000, 100_000) + red[24:]), "pixels"),
        ("tiny-vision", "data:image/webp;base64," + _b64(b"RIFF\x00\x00\x00\x00WEBPVP8 "), "send PNG, JPEG"),
        ("tiny-vision", "ftp://127.0.0.1/x.png", "invalid image_url"),
        ("tiny", _url(red), "does not support vision"),
    ]
    for model, url, message in cases:
        with pytest.raises(openai.BadRequestError, match=message):
            ask(model, url)
    r = c.chat.completions.create(model="tiny-vision", max_tokens=N, temperature=0, messages=[
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": _url(red)}}]}])
    assert r.usage is not None and r.usage.completion_tokens == N
