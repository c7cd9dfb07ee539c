"""The Modelfile: parse it (line-numbered errors), type its parameters, format it back."""

from __future__ import annotations

import math
import re
from typing import Any

import msgspec

from corral.errors import ModelfileError

INSTRUCTIONS = ("from", "parameter", "template", "system", "adapter", "draft", "license", "message",
                "requires", "renderer", "parser")
ROLES = ("system", "user", "assistant")
MAX_VALUE = 8 * 1024 * 1024  # one instruction's value (a TEMPLATE block included)
MAX_MODELFILE = 32 * 1024 * 1024

# compat(ollama): api.Options field types; the value text is converted to these.
_INT = {"num_keep", "seed", "num_predict", "top_k", "repeat_last_n", "mirostat", "num_ctx", "num_batch",
        "num_gpu", "main_gpu", "num_thread", "num_gqa", "draft_num_predict"}
_FLOAT = {"temperature", "top_p", "min_p", "typical_p", "repeat_penalty", "presence_penalty",
          "frequency_penalty", "mirostat_tau", "mirostat_eta", "tfs_z"}
_BOOL = {"use_mmap", "use_mlock", "numa", "low_vram", "f16_kv", "vocab_only", "penalize_newline",
         "logits_all", "embedding_only"}
_LIST = {"stop"}
# Lower bounds that keep nonsense away from llama.cpp (None = no bound).
_MIN: dict[str, float] = {"num_ctx": 1, "num_batch": 1, "num_predict": -2, "top_k": 0, "repeat_last_n": -1,
                          "num_keep": -1, "num_thread": 0, "temperature": 0, "top_p": 0, "min_p": 0,
                          "typical_p": 0, "mirostat": 0, "num_gpu": -1, "main_gpu": 0, "draft_num_predict": 0}
_MAX: dict[str, float] = {"num_ctx": 1 << 24, "num_batch": 1 << 20, "top_p": 1, "min_p": 1, "typical_p": 1,
                          "mirostat": 2, "draft_num_predict": 64}


class Command(msgspec.Struct, frozen=True):
    """One instruction: lowercase ``name``, ``args`` (key for PARAMETER, role for MESSAGE), ``value``."""

    name: str
    value: str
    line: int
    args: str = ""


class Modelfile(msgspec.Struct):
    """A parsed Modelfile, instructions in file order."""

    commands: list[Command]

    def first(self, name: str) -> Command | None:
        return next((c for c in self.commands if c.name == name), None)

    def all(self, name: str) -> list[Command]:
        return [c for c in self.commands if c.name == name]


def _err(line: int, message: str) -> ModelfileError:
    return ModelfileError(f"Modelfile line {line}: {message}")


def parse_modelfile(text: str) -> Modelfile:
    """Parse Modelfile text.

    Raises:
        ModelfileError: ``Modelfile line N: ...`` naming what is wrong.
    """
    if len(text) > MAX_MODELFILE:
        raise ModelfileError(f"Modelfile is larger than {MAX_MODELFILE // (1024 * 1024)} MiB")
    text = text.removeprefix("\ufeff").replace("\r\n", "\n")
    lines = text.split("\n")
    commands: list[Command] = []
    i = 0
    while i < len(lines):
        lineno, line = i + 1, lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ") if " " in line else line.partition("\t")
        name = word.lower()
        if name not in INSTRUCTIONS:
            shown = word[:40] if word.isprintable() else repr(word[:40])
            raise _err(lineno, f'unknown instruction "{shown}"; must be one of '
                               + ", ".join(n.upper() for n in INSTRUCTIONS))
        rest = rest.strip()
        args = ""
        if name in ("parameter", "message"):
            args, _, rest = rest.partition(" ") if " " in rest else rest.partition("\t")
            rest = rest.strip()
            if not args:
                what = "a parameter name and a value" if name == "parameter" else "a role and a message"
                raise _err(lineno, f"{name.upper()} needs {what}")
        value, i = _value(rest, lines, i, lineno)
        if len(value) > MAX_VALUE:
            raise _err(lineno, f"{name.upper()} value is longer than {MAX_VALUE // (1024 * 1024)} MiB")
        commands.append(_check(Command(name, value, lineno, args.lower() if name == "parameter" else args)))
    if not any(c.name == "from" for c in commands):
        raise ModelfileError("Modelfile has no FROM line")
    # Several FROM lines are GGUF files of one model (Ollama writes a vision model as its weights and
    # its projector); whoever resolves them to files or a model name checks that they are files.
    return Modelfile(commands)


def _value(rest: str, lines: list[str], i: int, lineno: int) -> tuple[str, int]:
    """The instruction value starting at ``rest``; may consume further lines for ``\"\"\"`` blocks."""
    if rest.startswith('"""'):
        body = rest[3:]
        parts = []
        while '"""' not in body:
            parts.append(body)
            if i >= len(lines):
                raise _err(lineno, 'unterminated """ block (no closing """)')
            body = lines[i]
            i += 1
            if sum(len(p) for p in parts) > MAX_VALUE:
                raise _err(lineno, f"value is longer than {MAX_VALUE // (1024 * 1024)} MiB")
        end = body.index('"""')
        if body[end + 3 :].strip():
            raise _err(i if parts else lineno, 'unexpected text after closing """')
        parts.append(body[:end])
        return "\n".join(parts), i
    if rest.startswith('"'):
        out, j = [], 1
        while j < len(rest):
            ch = rest[j]
            if ch == "\\" and j + 1 < len(rest) and rest[j + 1] in '"\\':
                out.append(rest[j + 1])
                j += 2
                continue
            if ch == '"':
                if rest[j + 1 :].strip():
                    raise _err(lineno, "unexpected text after closing quote")
                return "".join(out), i
            out.append(ch)
            j += 1
        raise _err(lineno, "unterminated quoted string")
    if not rest:
        raise _err(lineno, "missing value")
    return rest, i


def _check(cmd: Command) -> Command:
    if cmd.name == "message" and cmd.args.lower() not in ROLES:
        raise _err(cmd.line,
                   f'invalid MESSAGE role "{cmd.args[:40]}"; must be one of system, user, assistant')
    if cmd.name == "parameter":
        try:
            convert_parameter(cmd.args, cmd.value, partial=True)
        except ValueError as exc:
            raise _err(cmd.line, str(exc)) from None
    if cmd.name == "requires":
        try:
            check_requires(cmd.value)
        except ValueError as exc:
            raise _err(cmd.line, str(exc)) from None
    return cmd


# golang.org/x/mod/semver: vMAJOR[.MINOR[.PATCH[-PRERELEASE][+BUILD]]], no leading zeros
_NUM = r"(?:0|[1-9]\d*)"
_IDENT = r"[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*"
_SEMVER = re.compile(rf"v{_NUM}(?:\.{_NUM}(?:\.{_NUM}(?:-{_IDENT})?(?:\+{_IDENT})?)?)?")


def check_requires(value: str) -> str:
    """A REQUIRES version as Ollama stores it (semver, the `v` optional and dropped).

    Raises:
        ValueError: not a valid semantic version (Ollama's wording).
    """
    v = value.strip()
    v = v if v.startswith("v") else "v" + v
    if not _SEMVER.fullmatch(v):
        raise ValueError("requires must be a valid semver (e.g. 0.14.0)")
    return v[1:]


def convert_parameter(key: str, value: Any, *, partial: bool = False) -> Any:
    """A parameter value typed as Ollama's options are (text from a Modelfile, or JSON values).

    Raises:
        ValueError: unknown parameter, wrong type or out-of-range value (message names it).
    """
    key = key.lower()
    if key == "tensor_split":
        from corral.options import parse_tensor_split

        try:
            return parse_tensor_split(value, partial=partial)
        except ValueError as exc:
            raise ValueError(f"parameter tensor_split {exc}") from None
    if key in _LIST:
        if isinstance(value, list):
            return [str(v) for v in value]
        return [str(value)]
    if key in _INT:
        if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
            raise ValueError(f'parameter {key} must be an integer, not "{value}"')
        try:
            out: Any = int(value)
        except (TypeError, ValueError):
            raise ValueError(f'parameter {key} must be an integer, not "{str(value)[:40]}"') from None
    elif key in _FLOAT:
        if isinstance(value, bool):
            raise ValueError(f'parameter {key} must be a number, not "{value}"')
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise ValueError(f'parameter {key} must be a number, not "{str(value)[:40]}"') from None
        if not math.isfinite(out):
            raise ValueError(f"parameter {key} must be a finite number")
    elif key in _BOOL:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text not in ("true", "false", "1", "0"):
            raise ValueError(f'parameter {key} must be true or false, not "{str(value)[:40]}"')
        return text in ("true", "1")
    else:
        raise ValueError(f'unknown parameter "{key[:40]}"')
    if key in _MIN and out < _MIN[key]:
        raise ValueError(f"parameter {key} must be at least {_MIN[key]:g}, not {out}")
    if key in _MAX and out > _MAX[key]:
        raise ValueError(f"parameter {key} must be at most {_MAX[key]:g}, not {out}")
    return out


def parameters_of(mf: Modelfile) -> dict[str, Any]:
    """PARAMETER lines as a typed dict; ``stop`` and ``tensor_split`` accumulate into a list."""
    params: dict[str, Any] = {}
    split_line = 0
    for c in mf.all("parameter"):
        v = convert_parameter(c.args, c.value, partial=True)
        if c.args in _LIST or c.args == "tensor_split":  # `corral show` writes one line per share
            params.setdefault(c.args, []).extend(v)
            split_line = c.line if c.args == "tensor_split" else split_line
        else:
            params[c.args] = v
    if "tensor_split" in params:  # the shares are checked together, as one value
        try:
            params["tensor_split"] = convert_parameter("tensor_split", params["tensor_split"])
        except ValueError as exc:
            raise _err(split_line, str(exc)) from None
    return params


def merge_parameters(base: dict[str, Any], new: dict[str, Any] | None) -> dict[str, Any]:
    """compat(ollama): new keys win and lists are replaced, not appended."""
    out = dict(base)
    for key, value in (new or {}).items():
        out[key] = convert_parameter(key, value)
    return out


def go_value(value: Any) -> str:
    """A value as Go's ``%#v`` prints it in show's parameter table."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}" if value == int(value) else repr(value)
    if isinstance(value, str):
        return msgspec.json.encode(value).decode()
    return str(value)


def quote(text: str) -> str:
    """A value formatted for a Modelfile line (``\"\"\"`` block when it needs one)."""
    if '"""' not in text and ("\n" in text or '"' in text or text != text.strip() or not text):
        return f'"""{text}"""'
    if '"""' in text:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'
    return text
