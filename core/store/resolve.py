"""A store record turned into the engine's ``ModelSpec``: files, layers, GGUF facts and capabilities."""

from __future__ import annotations

import functools
from pathlib import Path

from corral import gguf
from corral.errors import InvalidModelFileError
from corral.prompts.capabilities import capabilities
from corral.spec import GGUFFacts, ModelFiles, ModelSpec
from corral.store.draft import vocab_problem
from corral.store.records import ModelRecord


def header(path: Path) -> gguf.GGUFInfo:
    """The GGUF header without large arrays, cached: blobs are immutable, so path + inode +
    size + mtime identify the content (a 256k-token vocabulary takes ~0.5 s to walk)."""
    st = path.stat()
    return _header(str(path), st.st_ino, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _header(path: str, ino: int, size: int, mtime_ns: int) -> gguf.GGUFInfo:
    return gguf.read_gguf_info(path, keep_arrays=False)


def gguf_facts(path: Path | None) -> GGUFFacts:
    """The facts the engine needs from the model file's header (empty when there is no file).

    A file that is not a GGUF raises ``InvalidModelFileError`` (a 400) before anything is loaded.
    """
    if path is None:
        return GGUFFacts()
    try:
        return GGUFFacts.from_kv(header(path).kv)
    except OSError:  # gone since the manifest was read: loading it is what reports the problem
        return GGUFFacts()


def model_spec(record: ModelRecord) -> ModelSpec:
    """The frozen spec of ``record``: what every later step of a request reads instead of the record."""
    facts = gguf_facts(record.model_path)
    config = record.config
    return ModelSpec(
        name=record.name.full,
        display=record.display,
        digest=record.digest,
        files=ModelFiles(
            model=str(record.model_path) if record.model_path is not None else None,
            projector=str(record.projector) if record.projector is not None else None,
            adapters=tuple(str(p) for p in record.adapters),
            draft=_draft(record),
        ),
        parameters=dict(record.params),
        template=record.template,
        system=record.system,
        messages=tuple(record.messages),
        capabilities=tuple(capabilities(record.template, facts, projector=record.projector,
                                        parser=_text(config.get("parser")))),
        gguf=facts,
        details=record.details,
        renderer=_text(config.get("renderer")),
        parser=_text(config.get("parser")),
        requires=_text(config.get("requires")),
    )


def _draft(record: ModelRecord) -> str | None:
    """The draft model's path, once it is known to share the model's vocabulary (a pulled model's draft
    never went through create's check); a draft that cannot serve is a 400, never silently dropped."""
    if record.draft is None or record.model_path is None:
        return None
    try:
        problem = vocab_problem(record.model_path, record.draft)
    except OSError:
        problem = "its file is missing from the store; pull or create the model again"
    if problem:
        raise InvalidModelFileError(f'the draft model of "{record.display}" cannot draft for it: {problem}')
    return str(record.draft)


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""
