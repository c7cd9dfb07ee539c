"""A runner subprocess rebuilds the server's exact Config from the environment it is given."""

from __future__ import annotations

from pathlib import Path

from corral.config import Config
from corral.runner.process import runner_env


def test_every_setting_survives_the_trip_to_a_runner(monkeypatch):
    monkeypatch.setenv("CORRAL_LOAD_PLUGINS", "stale")  # must not leak into a config that loads all
    monkeypatch.setenv("UNRELATED_VARIABLE", "kept")
    configs = [
        Config(),
        Config(host="::1", port=8080, scheme="https", models=Path("/tmp/m s"), home=Path("/tmp/h"),
               keep_alive=float("inf"), num_parallel=7, max_loaded_models=2, max_queue=3, context_length=512,
               flash_attention=False, kv_cache_type="q8_0", speculative=False, backend="cpu",
               origins=("http://a", "http://b"),
               api_key="secret", max_body=1234, max_media_size=99, max_image_pixels=4096, max_media=3,
               fetch_images=True, noprune=True, debug=True, load_plugins=("cpu",),
               disable_plugins=("cuda",), extra_plugins=("corral.testing.fake",), trace_plugins=True,
               nohistory=True, cpu_variant="zen4", workers=("10.0.0.5:50052", "box:1"), norepack=True,
               registry_mirror="http://10.0.0.2:5000/ollama", memory_limit=3 << 30, gpu_overhead=1 << 29,
               load_timeout=90.5),
        Config(keep_alive=0.25, flash_attention=True, load_plugins=()),
    ]
    # The second config sets every field, so a new setting missing from Config.to_env fails here.
    defaults = Config()
    unset = [f for f in Config.__struct_fields__ if getattr(configs[1], f) == getattr(defaults, f)]
    assert not unset, f"give these fields a non-default value in this test: {unset}"
    for config in configs:
        env = runner_env(config)
        assert env["UNRELATED_VARIABLE"] == "kept"
        assert Config.from_env(env) == config
