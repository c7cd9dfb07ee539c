"""Modelfile parsing: syntax, typing of parameters, and every error message."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.errors import ModelfileError
from corral.store.create import spec_from_modelfile
from corral.store.modelfile import convert_parameter, merge_parameters, parameters_of, parse_modelfile


def test_full_syntax() -> None:
    text = (
        "\ufeff# a comment\r\n"
        "from gemma3:270m\n"
        "\n"
        'Parameter stop "<end_of_turn>"\n'
        "PARAMETER stop <eos>\n"
        "PARAMETER temperature 0.7\n"
        "parameter NUM_CTX 2048\n"
        "PARAMETER use_mmap false\n"
        'TEMPLATE """{{ if .System }}{{ .System }}\n'
        "{{ end }}{{ .Prompt }}\"\"\"\n"
        'SYSTEM "You are \\"terse\\"."\n'
        "ADAPTER ./lora.gguf\n"
        'LICENSE """line one\n'
        'line two"""\n'
        "LICENSE MIT\n"
        "MESSAGE user Hi there\n"
        'MESSAGE assistant """Hello!"""\n'
        "REQUIRES v0.6.1\n"
    )
    mf = parse_modelfile(text)
    assert [c.name for c in mf.commands] == ["from", *["parameter"] * 5, "template", "system", "adapter",
                                             "license", "license", "message", "message", "requires"]
    assert mf.first("from").value == "gemma3:270m"  # type: ignore[union-attr]
    assert mf.first("template").value == "{{ if .System }}{{ .System }}\n{{ end }}{{ .Prompt }}"  # type: ignore[union-attr]
    assert mf.first("template").line == 9  # type: ignore[union-attr]
    assert mf.first("system").value == 'You are "terse".'  # type: ignore[union-attr]
    assert [c.value for c in mf.all("license")] == ["line one\nline two", "MIT"]
    assert [(c.args, c.value) for c in mf.all("message")] == [("user", "Hi there"), ("assistant", "Hello!")]
    assert parameters_of(mf) == {"stop": ["<end_of_turn>", "<eos>"], "temperature": 0.7, "num_ctx": 2048,
                                 "use_mmap": False}


@pytest.mark.parametrize(("text", "message"), [
    ("", "Modelfile has no FROM line"),
    ("# only a comment\nSYSTEM hi", "Modelfile has no FROM line"),
    ("FROM a\nFOO bar", 'Modelfile line 2: unknown instruction "FOO"; must be one of FROM, PARAMETER, '
                        "TEMPLATE, SYSTEM, ADAPTER, DRAFT, LICENSE, MESSAGE, REQUIRES, RENDERER, PARSER"),
    ("FROM a\nPARAMETER", "Modelfile line 2: PARAMETER needs a parameter name and a value"),
    ("FROM a\nMESSAGE", "Modelfile line 2: MESSAGE needs a role and a message"),
    ("FROM a\nPARAMETER stop", "Modelfile line 2: missing value"),
    ("FROM", "Modelfile line 1: missing value"),
    ('FROM a\nSYSTEM """never closed\nmore', 'Modelfile line 2: unterminated """ block (no closing """)'),
    ('FROM a\nSYSTEM """x\ny""" trailing', 'Modelfile line 3: unexpected text after closing """'),
    ('FROM a\nSYSTEM """x""" trailing', 'Modelfile line 2: unexpected text after closing """'),
    ('FROM a\nSYSTEM "x" y', "Modelfile line 2: unexpected text after closing quote"),
    ('FROM a\nSYSTEM "x', "Modelfile line 2: unterminated quoted string"),
    ("FROM a\nMESSAGE tool hi", 'Modelfile line 2: invalid MESSAGE role "tool"; must be one of system, user, '
                                "assistant"),
    ("FROM a\nPARAMETER bogus 1", 'Modelfile line 2: unknown parameter "bogus"'),
    ("FROM a\nPARAMETER num_ctx big", 'Modelfile line 2: parameter num_ctx must be an integer, not "big"'),
    ("FROM a\nPARAMETER num_ctx -1", "Modelfile line 2: parameter num_ctx must be at least 1, not -1"),
    ("FROM a\nPARAMETER top_p 2", "Modelfile line 2: parameter top_p must be at most 1, not 2.0"),
    ("FROM a\nPARAMETER temperature hot",
     'Modelfile line 2: parameter temperature must be a number, not "hot"'),
    ("FROM a\nPARAMETER temperature nan", "Modelfile line 2: parameter temperature must be a finite number"),
    ("FROM a\nPARAMETER use_mmap maybe",
     'Modelfile line 2: parameter use_mmap must be true or false, not "maybe"'),
    ("FROM a\nREQUIRES soon", "Modelfile line 2: requires must be a valid semver (e.g. 0.14.0)"),
    ("FROM a\nSYSTEM " + "x" * (8 * 1024 * 1024 + 1), "Modelfile line 2: SYSTEM value is longer than 8 MiB"),
    ('FROM a\nSYSTEM """' + ("x" * 1024 * 1024 + "\n") * 9, "Modelfile line 2: value is longer than 8 MiB"),
    ("FROM a\n" + "#" * (32 * 1024 * 1024 + 1), "Modelfile is larger than 32 MiB"),
])
def test_errors(text: str, message: str) -> None:
    with pytest.raises(ModelfileError) as err:
        parse_modelfile(text)
    assert str(err.value) == message


def test_parameter_typing_and_merge() -> None:
    assert convert_parameter("stop", ["a", "b"]) == ["a", "b"]
    assert convert_parameter("seed", 3.0) == 3
    with pytest.raises(ValueError, match="must be an integer"):
        convert_parameter("seed", 3.5)
    with pytest.raises(ValueError, match="must be an integer"):
        convert_parameter("seed", True)
    base = {"stop": ["a", "b"], "temperature": 1.0, "top_k": 64}
    assert merge_parameters(base, {"stop": ["c"], "temperature": "0.2"}) == {
        "stop": ["c"], "temperature": 0.2, "top_k": 64}  # new keys win, lists are replaced


def test_tensor_split_parameter() -> None:
    # One line, or one share per line as `corral show` writes lists; checked as a whole.
    one = parse_modelfile("FROM x\nPARAMETER tensor_split 3,1\n")
    assert parameters_of(one) == {"tensor_split": [3.0, 1.0]}
    lines = "FROM x\nPARAMETER tensor_split 0\nPARAMETER tensor_split 2\n"
    assert parameters_of(parse_modelfile(lines)) == {"tensor_split": [0.0, 2.0]}
    with pytest.raises(ModelfileError, match="line 2: parameter tensor_split must be"):
        parameters_of(parse_modelfile("FROM x\nPARAMETER tensor_split 0\n"))
    with pytest.raises(ModelfileError, match="line 2: parameter tensor_split must be numbers"):
        parse_modelfile("FROM x\nPARAMETER tensor_split 1,x\n")
    assert merge_parameters({}, {"tensor_split": [1, 2]}) == {"tensor_split": [1.0, 2.0]}
    with pytest.raises(ValueError, match="1 to 16"):
        merge_parameters({}, {"tensor_split": [1] * 17})


def test_spec_from_modelfile(tmp_path: Path, tiny_gguf: Path) -> None:
    (tmp_path / "m.gguf").write_bytes(tiny_gguf.read_bytes())
    mf = parse_modelfile("FROM ./m.gguf\nSYSTEM hi\nPARAMETER stop x\nMESSAGE user yo\nLICENSE L\n")
    spec, uploads = spec_from_modelfile(mf, tmp_path)
    (digest,) = uploads
    assert spec.files == {"m.gguf": digest} and uploads[digest] == tmp_path / "m.gguf"
    assert spec.system == "hi" and spec.parameters == {"stop": ["x"]} and spec.license == ["L"]
    assert [(m.role, m.content) for m in spec.messages or []] == [("user", "yo")]
    spec, uploads = spec_from_modelfile(parse_modelfile("FROM gemma3:270m"), tmp_path)
    assert spec.from_ == "gemma3:270m" and uploads == {}



def test_two_from_lines_are_a_model_and_its_projector(tmp_path: Path, tiny_gguf: Path) -> None:
    from corral.testing.tinyvision import write_tiny_projector

    (tmp_path / "m.gguf").write_bytes(tiny_gguf.read_bytes())
    write_tiny_projector(tmp_path / "mmproj.gguf")
    spec, uploads = spec_from_modelfile(parse_modelfile("FROM ./m.gguf\nFROM ./mmproj.gguf\n"), tmp_path)
    assert set(spec.files) == {"m.gguf", "mmproj.gguf"} and len(uploads) == 2
    with pytest.raises(ModelfileError, match="line 2: .*each must be a GGUF file.*'gemma3:270m'"):
        spec_from_modelfile(parse_modelfile("FROM ./m.gguf\nFROM gemma3:270m\n"), tmp_path)


@pytest.mark.parametrize(("from_", "message"), [
    ("./missing.gguf", "cannot read model file"),
    (".", "is a directory"),
    ("/dev/zero", "not a regular file"),
])
def test_spec_from_modelfile_refuses_bad_files(tmp_path: Path, from_: str, message: str) -> None:
    with pytest.raises(ModelfileError, match=f"Modelfile line 1: .*{message}"):
        spec_from_modelfile(parse_modelfile(f"FROM {from_}"), tmp_path)
