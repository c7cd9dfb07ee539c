"""Tests for corral.options: table, merge order, type checks, bounds, load/generation split."""

from __future__ import annotations

import logging

import pytest

from corral.config import Config
from corral.errors import InvalidRequestError
from corral.options import (
    LOAD_KEYS,
    OPTIONS,
    REMOVED_OPTIONS,
    default_options,
    for_prompt,
    merge_options,
    parse_parameter,
    to_generation,
    to_load_options,
)
from corral.types import LoadOptions, SamplingParams


def test_table_defaults_match_types_defaults() -> None:
    d = default_options()
    s = SamplingParams()
    for key in ("temperature", "top_k", "top_p", "min_p", "typical_p", "repeat_penalty",
                "repeat_last_n", "presence_penalty", "frequency_penalty", "seed"):
        assert d[key] == getattr(s, key), key
    assert d["num_predict"] == -1 and d["num_keep"] == 4 and d["num_batch"] == 512
    assert "num_ctx" not in d and "stop" not in d
    assert LOAD_KEYS == {"num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread",
                         "draft_num_predict", "tensor_split"}
    assert len(OPTIONS) == 21


def test_precedence_defaults_model_request() -> None:
    m = merge_options({"temperature": 0.5, "top_k": 10, "stop": ["<end>"]}, {"temperature": 0.1})
    assert m["temperature"] == 0.1  # request beats model
    assert m["top_k"] == 10  # model beats default
    assert m["top_p"] == 0.9  # default
    assert m["stop"] == ["<end>"]
    assert merge_options(None, None) == default_options()


def test_request_stop_replaces_model_stop() -> None:
    assert merge_options({"stop": ["a"]}, {"stop": ["b", "c"]})["stop"] == ["b", "c"]


def test_unknown_request_option_is_refused_but_a_models_is_only_logged(caplog) -> None:
    with pytest.raises(InvalidRequestError, match='unknown option "not_an_option"'):
        merge_options(None, {"not_an_option": 3, "temperature": 0})
    # a pulled model's params layer is the model's, not the client's: warned about and skipped, as Ollama does
    with caplog.at_level(logging.WARNING, logger="corral.options"):
        m = merge_options({"not_an_option": 3, "temperature": 0.5}, None)
    assert "not_an_option" not in m and m["temperature"] == 0.5
    assert any("not_an_option" in r.getMessage() for r in caplog.records)


def test_removed_keys_pass_only_with_the_value_that_asks_for_nothing(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="corral.options"):
        m = merge_options(None, {"mirostat": 0, "tfs_z": 1, "low_vram": False, "penalize_newline": True,
                                 "mirostat_eta": 0.3, "f16_kv": True})
    assert not REMOVED_OPTIONS & m.keys()
    assert not caplog.records
    for key, value in (("mirostat", 2), ("tfs_z", 0.9), ("low_vram", True), ("penalize_newline", False),
                       ("f16_kv", 1), ("mirostat_tau", "high")):
        with pytest.raises(InvalidRequestError, match=f'"{key}" was removed'):
            merge_options(None, {key: value})
    m = merge_options({"mirostat": 2, "tfs_z": 0.5}, None)  # a model's old params: dropped, as Ollama does
    assert not REMOVED_OPTIONS & m.keys()


@pytest.mark.parametrize(("key", "value", "word"), [
    ("top_k", "40", "integer"), ("top_k", True, "integer"), ("seed", [1], "integer"),
    ("temperature", "hot", "float"), ("temperature", False, "float"), ("temperature", float("nan"), "float"),
    ("use_mmap", 1, "boolean"), ("use_mmap", "true", "boolean"),
    ("stop", "###", "array of strings"), ("stop", ["a", 1], "array of strings"),
])
def test_wrong_type_is_invalid_request(key, value, word) -> None:
    with pytest.raises(InvalidRequestError) as e:
        merge_options(None, {key: value})
    assert str(e.value) == f'option "{key}" must be of type {word}'


def test_wrong_type_in_model_params_names_parameter() -> None:
    with pytest.raises(InvalidRequestError, match='parameter "top_k" must be of type integer'):
        merge_options({"top_k": "x"}, None)


def test_ints_accept_numbers_truncated_and_floats_accept_ints() -> None:
    m = merge_options(None, {"top_k": 7.9, "num_predict": -1.5, "temperature": 1, "seed": 42.0})
    assert m["top_k"] == 7 and isinstance(m["top_k"], int)
    assert m["num_predict"] == -1
    assert m["temperature"] == 1.0 and isinstance(m["temperature"], float)
    assert m["seed"] == 42


def test_null_means_not_given() -> None:
    assert merge_options({"temperature": 0.3}, {"temperature": None})["temperature"] == 0.3


def test_options_must_be_an_object() -> None:
    with pytest.raises(InvalidRequestError):
        merge_options(None, ["temperature", 1])  # type: ignore[arg-type]


def test_load_options_defaults_from_config() -> None:
    cfg = Config(context_length=8192, num_parallel=2, flash_attention=True, kv_cache_type="q8_0")
    lo = to_load_options(merge_options(None, None), cfg)
    assert lo == LoadOptions(num_ctx=8192, num_parallel=2, flash_attention=True, kv_cache_type="q8_0")


def test_load_options_from_request_and_trained_cap() -> None:
    opts = merge_options(None, {"num_ctx": 100000, "num_batch": 64, "num_gpu": 0, "num_thread": 2,
                                "use_mmap": False})
    lo = to_load_options(opts, Config(), n_ctx_train=32768, embedding=True, adapters=["/a.gguf"])
    assert (lo.num_ctx, lo.num_batch, lo.num_gpu, lo.num_thread, lo.use_mmap) == (32768, 64, 0, 2, False)
    assert lo.embedding and lo.adapters == ("/a.gguf",)
    assert to_load_options({"num_ctx": 2}, Config()).num_ctx == 4  # compat: minimum 4


def test_draft_num_predict_is_a_load_option() -> None:
    assert to_load_options(merge_options(None, None), Config()).draft_num_predict == -1  # the default
    assert to_load_options(merge_options({"draft_num_predict": 3}, None), Config()).draft_num_predict == 3
    assert to_load_options(merge_options(None, {"draft_num_predict": 0}), Config()).draft_num_predict == 0


@pytest.mark.parametrize("opts", [{"num_ctx": -1}, {"num_ctx": 1 << 30}, {"num_batch": 0},
                                  {"num_gpu": -2}, {"main_gpu": -1}, {"num_thread": -3},
                                  {"num_thread": 100000}, {"draft_num_predict": -1},
                                  {"draft_num_predict": 65}])
def test_load_bounds_are_400(opts) -> None:
    with pytest.raises(InvalidRequestError, match="must be between"):
        to_load_options(merge_options(None, opts), Config())


@pytest.mark.parametrize(("env", "value", "words"), [
    ("CORRAL_KV_CACHE_TYPE", "q2", "CORRAL_KV_CACHE_TYPE must be one of f16, q8_0, q4_0, not 'q2'"),
    ("CORRAL_NUM_PARALLEL", "0", "CORRAL_NUM_PARALLEL must be at least 1, not 0"),
    ("CORRAL_CONTEXT_LENGTH", "-5", "CORRAL_CONTEXT_LENGTH must be at least 1, not -5"),
    ("CORRAL_MAX_QUEUE", "many", "invalid literal"),
])
def test_a_bad_setting_fails_when_the_config_is_built(env, value, words) -> None:
    # at startup (the CLI turns this into a usage error), never as a 400 on some later request
    with pytest.raises(ValueError, match="invalid environment setting: ") as e:
        Config.from_env({env: value})
    assert words in str(e.value)
    with pytest.raises(ValueError, match="CORRAL_KV_CACHE_TYPE"):
        Config(kv_cache_type="q2")


def test_generation_defaults() -> None:
    req = for_prompt(to_generation(merge_options(None, None)), [1, 2, 3], n_ctx=4096)
    assert req.prompt == [1, 2, 3]
    assert req.sampling == SamplingParams()
    assert (req.num_predict, req.stop, req.num_keep, req.shift, req.logprobs) == (-1, [], 4, True, False)


def test_generation_from_options() -> None:
    opts = merge_options({"stop": ["x", ""]}, {"temperature": 0, "seed": 7, "num_predict": 5,
                                              "repeat_last_n": -1, "num_keep": -1, "top_k": 0})
    settings = to_generation(opts, top_logprobs=3)
    # what depends on the loaded context waits for the prompt: -1 stays -1 until then
    assert settings.prompt == [] and settings.num_keep == -1 and settings.sampling.repeat_last_n == -1
    req = for_prompt(settings, list(range(10)), n_ctx=2048, grammar='root ::= "a"', stop=["<end>", "x"])
    s = req.sampling
    assert (s.temperature, s.seed, s.repeat_last_n, s.top_k, s.grammar) == (0.0, 7, 2048, 0, 'root ::= "a"')
    assert req.num_predict == 5 and req.stop == ["x", "<end>"] and req.num_keep == 10
    assert req.logprobs and req.top_logprobs == 3


def test_seed_and_num_predict_normalised() -> None:
    req = to_generation(merge_options(None, {"seed": -5, "num_predict": -2}))
    assert req.sampling.seed == -1 and req.num_predict == -1
    assert to_generation({"seed": (1 << 32) + 3}).sampling.seed == 3
    assert to_generation({"repeat_penalty": 0.0}).sampling.repeat_penalty == 1.0
    assert for_prompt(to_generation({"num_keep": 99999}), [1], n_ctx=512).num_keep == 511


@pytest.mark.parametrize("opts", [{"temperature": -0.1}, {"top_p": 1.5}, {"top_p": -0.1}, {"min_p": 2.0},
                                  {"typical_p": -1.0}, {"top_k": -1}, {"repeat_last_n": -2},
                                  {"repeat_penalty": -1.0}])
def test_generation_bounds_are_400(opts) -> None:
    with pytest.raises(InvalidRequestError, match="must be between"):
        to_generation(merge_options(None, opts))


def test_too_many_or_too_long_stops() -> None:
    with pytest.raises(InvalidRequestError, match="stop"):
        to_generation(merge_options(None, {"stop": ["s"] * 65}))
    with pytest.raises(InvalidRequestError, match="stop"):
        to_generation(merge_options(None, {"stop": ["s" * 2000]}))


def test_parse_parameter() -> None:
    assert parse_parameter("temperature", ["0.7"]) == 0.7
    assert parse_parameter("num_ctx", ["8192"]) == 8192
    assert parse_parameter("use_mmap", ["false"]) is False
    assert parse_parameter("stop", ["<a>", "<b>"]) == ["<a>", "<b>"]
    assert parse_parameter("mirostat", ["2"]) is None
    with pytest.raises(InvalidRequestError, match="unknown parameter"):
        parse_parameter("bogus", ["1"])
    with pytest.raises(InvalidRequestError, match="invalid integer"):
        parse_parameter("num_ctx", ["8k"])
    with pytest.raises(InvalidRequestError, match="invalid boolean"):
        parse_parameter("use_mmap", ["maybe"])


def test_tensor_split_option() -> None:
    lo = to_load_options(merge_options({"tensor_split": [3, 1]}, None), Config())
    assert lo.tensor_split == (3.0, 1.0)
    lo = to_load_options(merge_options(None, {"tensor_split": [0, 2.5]}), Config())
    assert lo.tensor_split == (0.0, 2.5)
    assert to_load_options({}, Config()).tensor_split == ()  # unset: llama.cpp splits by free memory
    assert parse_parameter("tensor_split", ["3,1"]) == [3.0, 1.0]
    with pytest.raises(InvalidRequestError, match='"tensor_split" must be of type array of numbers'):
        merge_options(None, {"tensor_split": "3,1"})
    for bad in ([], [0, 0], [-1, 1], [1] * 17, [True], [float("inf")]):
        with pytest.raises(InvalidRequestError, match='option "tensor_split" must be'):
            merge_options(None, {"tensor_split": bad})


def test_norepack_config_turns_repacking_off() -> None:
    assert to_load_options({}, Config()).repack is True
    assert to_load_options({}, Config(norepack=True)).repack is False
    assert Config.from_env({"CORRAL_NOREPACK": "1"}).norepack
