"""Workers with `--memory` below the model's size: together they hold Gemma 3 270M, alone they refuse it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from rpc_cluster import Server, Worker

from corral.config import Config
from corral.errors import ModelLoadError
from corral.store.store import Store
from corral.types import LoadOptions

pytestmark = pytest.mark.gemma

ALL = set(range(18))


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory,
           gemma_models: Path) -> Iterator[tuple[Worker, Worker, Server]]:
    root = tmp_path_factory.mktemp("rpc-memory")
    # The model is 241 MiB; its output layer alone (a second copy of the 170 MiB token embedding, as
    # llama.cpp ties them) goes to the last worker, so that one gets the larger share.
    small, large = Worker(root, "small", "--memory", "150MiB"), Worker(root, "large", "--memory", "235MiB")
    server = Server(root, "rpc", gemma_models, "--workers", f"{small.endpoint},{large.endpoint}",
                    CORRAL_CONTEXT_LENGTH="512", CORRAL_NUM_PARALLEL="1")
    try:
        small.start(), large.start()
        small.wait_ready(), large.wait_ready()
        server.start().wait_ready()
        yield small, large, server
    finally:
        for p in (server, small, large):
            p.stop()


def test_each_worker_alone_refuses_the_model_with_the_numbers(capped, gemma_models: Path) -> None:
    from corral_plugins._llama import rpc as native_rpc
    from corral_plugins.rpc import RpcBackend

    path = str(Store(gemma_models).get("gemma3:270m").model_path)
    for worker in capped[:2]:
        backend = RpcBackend()  # the plugin as a runner holds it; the refusal comes before any native code
        assert backend.corral_probe_backend(Config(workers=(worker.endpoint,))).usable
        with pytest.raises(ModelLoadError) as err:
            backend.corral_load_model(path, LoadOptions(num_ctx=512, num_parallel=1), None, None)
        message = str(err.value)
        assert "does not fit the RPC workers" in message and worker.endpoint in message, message
        assert "MiB of weights" in message and "corral worker --memory" in message, message
    assert not native_rpc._registered  # nothing was handed to llama.cpp


def test_together_the_capped_workers_hold_the_model(capped) -> None:
    small, large, server = capped
    assert server.generate("Why is the sky blue?")["response"].strip()
    held = small.wait_layers(bool), large.wait_layers(bool)
    assert held[0] and held[1] and held[0] | held[1] == ALL, held
    assert "of 150 MiB offered" in small.text() and "of 235 MiB offered" in large.text()


def test_tensor_split_from_the_model_parameters_places_the_layers(capped) -> None:
    small, large, server = capped
    r = server.http.post("/api/create", json={"model": "gemma-split", "from": "gemma3:270m",
                                               "parameters": {"tensor_split": [3, 1]}, "stream": False})
    assert r.status_code == 200, r.text
    assert server.generate("Why is the sky blue?", model="gemma-split")["response"].strip()
    # Three quarters of the 19 places (18 layers and the output) go to the first worker.
    assert small.wait_layers(lambda h: h == set(range(15))) == set(range(15))
    assert large.wait_layers(lambda h: h == {15, 16, 17}) == {15, 16, 17}
    # More shares than devices is the request's mistake, named as such.
    r = server.http.post("/api/generate", json={"model": "gemma-split", "prompt": "hi", "stream": False,
                                                 "options": server.options(tensor_split=[1, 1, 1])})
    assert r.status_code == 400, r.text
    assert "3 shares" in r.json()["error"] and small.endpoint in r.json()["error"], r.text


def test_num_gpu_unset_offloads_the_layers_that_fit_and_keeps_the_rest_here(tmp_path: Path,
                                                                            gemma_models: Path) -> None:
    # One worker offering 210 MiB: not the whole model (241 MiB of weights), so llama.cpp's fit puts
    # as many layers on it as fit there (the output layer, a 170 MiB copy of the token embedding, goes
    # first) and the rest on this host, instead of refusing.
    worker = Worker(tmp_path, "w", "--memory", "210MiB")
    server = Server(tmp_path, "rpc", gemma_models, "--workers", worker.endpoint,
                    CORRAL_CONTEXT_LENGTH="512", CORRAL_NUM_PARALLEL="1")
    try:
        worker.start().wait_ready()
        server.start().wait_ready()
        assert server.generate("Why is the sky blue?")["response"].strip()
        held = worker.wait_layers(bool)
        assert held and held != ALL, held  # some layers there, not all
        [row] = server.http.get("/api/ps").json()["models"]
        assert 0 < row["size_vram"] < row["size"], row  # the real split: part on the worker, part here
        assert row["size_vram"] <= 210 * 2**20
        # the user's num_gpu is never changed: all 19 places on a 210 MiB worker is refused, with numbers
        r = server.http.post("/api/generate", json={"model": "gemma3:270m", "prompt": "hi", "stream": False,
                                                     "options": server.options(num_gpu=99)})
        assert r.status_code in (500, 507), r.text
        error = r.json()["error"]
        assert "does not fit" in error or "model requires more memory" in error, r.text
    finally:
        server.stop()
        worker.stop()
