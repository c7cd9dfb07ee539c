"""`corral create -f Modelfile`: parse locally, upload local files as blobs, then POST /api/create."""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from corral.errors import CorralError, ModelfileError

CHUNK = 1 << 20


def _local_path(value: str, base: Path) -> Path | None:
    """The file a FROM/ADAPTER value names, or None when it is a model name.

    As Ollama's client does: a value that exists on disk, or looks like a path, is a path.
    """
    raw = os.path.expanduser(value)
    path = Path(raw) if os.path.isabs(raw) else base / raw
    looks_like_path = value.startswith((".", "/", "~")) or value.lower().endswith((".gguf", ".bin"))
    if path.exists() or looks_like_path:
        return path
    return None


def build_request(model: str, modelfile: Path, quantize: str | None,
                  draft_quantize: str | None = None) -> tuple[dict[str, Any], list[tuple[str, Path]]]:
    """The /api/create body and the local files (kind, path) to upload first, from a Modelfile."""
    from corral.store.create import check_draft_path
    from corral.store.modelfile import parameters_of, parse_modelfile

    try:
        text = modelfile.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelfileError(f"no Modelfile at {modelfile}; give one with -f PATH") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelfileError(f"cannot read the Modelfile {modelfile}: {exc}") from None
    mf = parse_modelfile(text)
    base = modelfile.resolve().parent
    body: dict[str, Any] = {"model": model}
    uploads: list[tuple[str, Path]] = []
    n_from = sum(1 for cmd in mf.commands if cmd.name == "from")
    for cmd in mf.commands:
        if cmd.name in ("from", "adapter", "draft"):
            path = _local_path(cmd.value, base)
            if path is None and cmd.name == "from":
                if n_from > 1:
                    raise ModelfileError(f"Modelfile line {cmd.line}: with several FROM lines each must be a "
                                         f"GGUF file (a model and its projector), not the model name "
                                         f"{cmd.value!r}")
                body["from"] = cmd.value
                continue
            if path is None or not path.exists():
                raise ModelfileError(f"Modelfile line {cmd.line}: {cmd.name.upper()} file {cmd.value!r} "
                                     "does not exist")
            if path.is_dir():
                raise ModelfileError(f"Modelfile line {cmd.line}: {cmd.value!r} is a directory; corral "
                                     "imports GGUF files only (convert safetensors to GGUF first)")
            if cmd.name == "draft":
                check_draft_path(path, [_local_path(c.value, base) for c in mf.all("from")], cmd.line)
            uploads.append((cmd.name, path))
        elif cmd.name in ("template", "system", "renderer", "parser", "requires"):
            body[cmd.name] = cmd.value
        elif cmd.name == "license":
            body.setdefault("license", []).append(cmd.value)
        elif cmd.name == "message":
            body.setdefault("messages", []).append({"role": cmd.args.lower(), "content": cmd.value})
    params = parameters_of(mf)
    if params:
        body["parameters"] = params
    if quantize:
        body["quantize"] = quantize
    if draft_quantize:
        body["draft_quantize"] = draft_quantize
    return body, uploads


def _hash(path: Path, label: str) -> Iterator[dict[str, Any]]:
    total = path.stat().st_size
    h = hashlib.sha256()
    done = 0
    last = 0.0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            done += len(chunk)
            now = time.monotonic()
            if now - last > 0.1 or done == total:
                last = now
                yield {"status": f"hashing {label}", "digest": f"file:{label}", "total": total,
                       "completed": done}
    yield {"status": "digest", "value": f"sha256:{h.hexdigest()}"}


class _Counting:
    """A file wrapper that counts the bytes http.client has read, for the upload bar."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.done = 0

    def read(self, n: int = -1) -> bytes:
        data: bytes = self.f.read(n)
        self.done += len(data)
        return data


def _upload(client: Any, path: Path, digest: str) -> Iterator[dict[str, Any]]:
    blob = f"/api/blobs/{digest}"
    if client.status("HEAD", blob) == 200:
        yield {"status": f"using existing layer {digest}"}
        return
    total = path.stat().st_size
    errors: list[BaseException] = []
    with path.open("rb") as f:
        counting = _Counting(f)

        def send() -> None:
            try:
                client.upload(blob, counting, total)
            except BaseException as exc:  # re-raised below, on the main thread
                errors.append(exc)

        worker = threading.Thread(target=send, daemon=True)
        worker.start()
        while worker.is_alive():
            worker.join(0.1)
            yield {"status": f"copying {path.name}", "digest": digest, "total": total,
                   "completed": counting.done}
    if errors:
        raise errors[0]
    yield {"status": f"copying {path.name}", "digest": digest, "total": total, "completed": total}


def events(client: Any, body: dict[str, Any],
           uploads: list[tuple[str, Path]]) -> Generator[dict[str, Any], None, None]:
    """Local hashing and uploads, then the server's create progress, as one stream of progress dicts."""
    for kind, path in uploads:
        digest = ""
        for ev in _hash(path, path.name):
            if ev["status"] == "digest":
                digest = ev["value"]
            else:
                yield ev
        yield from _upload(client, path, digest)
        key = {"from": "files", "adapter": "adapters", "draft": "draft_files"}[kind]
        body.setdefault(key, {})[path.name] = digest
    yield from client.stream("POST", "/api/create", {**body, "stream": True})


def create(
    model: Annotated[str, typer.Argument(help="Name for the new model.")],
    file: Annotated[Path, typer.Option("--file", "-f", help="Modelfile to read.")] = Path("Modelfile"),
    quantize: Annotated[str | None, typer.Option(
        "--quantize", "-q", help="Quantize an F16/F32 model: q4_K_M, q4_K_S, q8_0.")] = None,
    draft_quantize: Annotated[str | None, typer.Option(
        "--draft-quantize", help="Quantize an F16/F32 DRAFT model: q4_K_M, q4_K_S, q8_0.")] = None,
) -> None:
    """Create a model from a Modelfile."""
    from corral.cli.common import connect
    from corral.cli.progress import follow

    body, uploads = build_request(model, file, quantize, draft_quantize)
    client = connect()
    stream = events(client, body, uploads)
    try:
        last = follow(stream)
    except KeyboardInterrupt:
        stream.close()
        sys.stderr.write(f"\ncreate interrupted; run 'corral create {model}' again to finish\n")
        raise typer.Exit(130) from None
    if not last or last.get("status") != "success":
        raise CorralError(f"the server ended the create of {model!r} without success")
