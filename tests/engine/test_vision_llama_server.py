"""corral on the tiny vision model against llama.cpp's own `llama-server --mmproj` from the same pin:
the same files and images give the same greedy tokens, answers and prompt token counts."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import importlib.util
import io
import os
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

import corral_plugins.cpu
from corral.config import Config
from corral.conversation import Message
from corral.engine import Engine
from corral.jobs import ChatJob, GenerateJob
from corral.plugins import load_plugins
from corral.runner import local_runners
from corral.selection import BackendHooks
from corral.store.records import CreateSpec
from corral.store.store import Store
from corral.testing.fixtures import sample_images, tiny_gguf, tiny_gguf_spec, tiny_projector
from corral.types import CancelToken, GenerationRequest, LoadOptions, MediaInput, SamplingParams

__all__ = ["sample_images", "tiny_gguf", "tiny_gguf_spec", "tiny_projector"]
ROOT = Path(__file__).resolve().parents[2]
CPU_LIB = Path(corral_plugins.cpu.__file__).parent / "_lib"
MARKER = "<__media__>"
N_PREDICT = 16

pytestmark = pytest.mark.skipif(not any(CPU_LIB.glob("_llama_cpu*")),
                                reason="the CPU backend is not built: run build_backends.py")


def _bench_tools():
    spec = importlib.util.spec_from_file_location("corral_bench_tools", ROOT / "bench" / "_tools.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def images(sample_images) -> dict[str, bytes]:
    """The two PNGs and a JPEG (JPEG decoders differ in rounding: both sides must use the same one)."""
    from PIL import Image

    photo = Image.new("RGB", (48, 40))
    photo.putdata([((x * 5) % 256, (y * 6) % 256, (x * y) % 256) for y in range(40) for x in range(48)])
    buf = io.BytesIO()
    photo.save(buf, format="JPEG", quality=80)
    return {**sample_images, "jpeg": buf.getvalue()}


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory, tiny_gguf: Path, tiny_projector):
    """llama-server (build_backends.py --tools) on corral's own CPU variant, serving the same files."""
    tools = _bench_tools()
    folder = tools.tools_dir()
    if folder is None or not (folder / "llama-server").is_file():
        pytest.skip("llama-server is not built: run `python build_backends.py --tools`")
    exe = tools.stage_tool(folder / "llama-server", tmp_path_factory.mktemp("llama-server"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(exe.parent / "server.log", "w")  # noqa: SIM115 (closed below)
    args = [str(exe), "-m", str(tiny_gguf), "--mmproj", tiny_projector.path, "--port", str(port),
            "-c", "1024", "-np", "1", "-t", "2", "--no-warmup"]
    env = {**os.environ, "LLAMA_MEDIA_MARKER": MARKER}  # a fixed marker instead of a random one
    proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            alive = proc.poll() is None and time.monotonic() < deadline
            assert alive, (exe.parent / "server.log").read_text()
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _text(chunks) -> str:
    # A cut-off last character: corral flushes it as U+FFFD, llama-server drops the partial bytes.
    return "".join(c.content for c in chunks).removesuffix("\ufffd")


def test_raw_prompt_tokens_equal_llama_server(llama_server, tiny_gguf, tiny_projector, images):
    hooks = BackendHooks(load_plugins(Config(load_plugins=("cpu",))), "cpu")
    handle = hooks.load_model(str(tiny_gguf), LoadOptions(num_ctx=1024, num_parallel=1,
                                                          projector=tiny_projector.path))
    try:
        cases = [("hello ", [images["red"]], " what is this"),
                 ("hello ", [images["gradient"]], " what is this"),
                 ("a photo ", [images["jpeg"]], " of"),
                 ("", [images["red"], images["gradient"]], " compare")]
        answers = []
        for head, imgs, tail in cases:
            text = head + MARKER * len(imgs) + tail
            ref = httpx.post(f"{llama_server}/completion", timeout=60, json={
                "prompt": {"prompt_string": text, "multimodal_data": [_b64(i) for i in imgs]},
                "n_predict": N_PREDICT, "temperature": 0, "cache_prompt": False, "return_tokens": True,
            }).json()
            # corral: the text between markers tokenized piece by piece, the images between the pieces.
            pieces = text.split(MARKER)
            prompt: list[int] = []
            media = []
            for i, piece in enumerate(pieces):
                if i:
                    media.append(MediaInput(data=imgs[i - 1], position=len(prompt)))
                if piece or i == 0:
                    prompt += hooks.tokenize(handle, piece, add_special=i == 0, parse_special=True)
            request = GenerationRequest(prompt=prompt, media=media, num_predict=N_PREDICT,
                                        sampling=SamplingParams(temperature=0.0))
            events = list(hooks.generate(handle, request, CancelToken()))
            ours = [e.token for e in events if e.token >= 0]
            assert ours == ref["tokens"], (text, ours, ref["tokens"])
            assert events[-1].stats.prompt_tokens == ref["tokens_evaluated"]
            answers.append(tuple(ours))
        assert len(set(answers)) == len(answers)  # every image changed the answer
    finally:
        hooks.unload(handle)


def test_chat_and_generate_through_the_engine_equal_llama_server(llama_server, tmp_path, tiny_gguf,
                                                                  tiny_projector, images):
    store = Store(tmp_path / "models")
    files = {}
    for name, path in (("model.gguf", tiny_gguf), ("mmproj.gguf", Path(tiny_projector.path))):
        data = path.read_bytes()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()

        async def body(data: bytes = data):
            yield data

        asyncio.run(store.put_blob(digest, body()))
        files[name] = digest
    for _ in store.create("tiny-vision", CreateSpec(files=files, parameters={"temperature": 0})):
        pass
    config = Config(models=store.root, home=tmp_path, load_plugins=("cpu",), num_parallel=1,
                    context_length=1024)

    async def main():
        engine = Engine(config, store, runner_factory=local_runners(config))
        try:
            for key in ("red", "gradient", "jpeg"):
                url = f"data:image/{'jpeg' if key == 'jpeg' else 'png'};base64,{_b64(images[key])}"
                ref = httpx.post(f"{llama_server}/v1/chat/completions", timeout=60, json={
                    "messages": [{"role": "user", "content": [
                        {"type": "image_url", "image_url": {"url": url}},
                        {"type": "text", "text": "what is this"}]}],
                    "max_tokens": N_PREDICT, "temperature": 0, "cache_prompt": False}).json()
                job = ChatJob(model="tiny-vision", options={"num_predict": N_PREDICT},
                              messages=[Message(role="user", content="what is this", images=[images[key]])])
                chunks = [c async for c in engine.chat(job)]
                assert _text(chunks) == ref["choices"][0]["message"]["content"]
                assert chunks[-1].metrics.prompt_eval_count == ref["usage"]["prompt_tokens"]

                ref = httpx.post(f"{llama_server}/completion", timeout=60, json={
                    "prompt": {"prompt_string": f"describe {MARKER} now",
                               "multimodal_data": [_b64(images[key])]},
                    "n_predict": N_PREDICT, "temperature": 0, "cache_prompt": False}).json()
                job = GenerateJob(model="tiny-vision", prompt="describe [img] now", raw=True,
                                  images=[images[key]], options={"num_predict": N_PREDICT})
                chunks = [c async for c in engine.generate(job)]
                assert _text(chunks) == ref["content"]
                assert chunks[-1].metrics.prompt_eval_count == ref["tokens_evaluated"]
        finally:
            await engine.shutdown()

    asyncio.run(main())
