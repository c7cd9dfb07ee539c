"""Create a model from uploaded GGUF blobs or an existing model, optionally quantizing it."""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import msgspec

from corral import gguf
from corral.errors import InvalidModelFileError, InvalidRequestError, ModelfileError, TemplateError
from corral.names import parse_name
from corral.prompts import gotemplate, renderpool
from corral.store import blobs as _blobs
from corral.store import manifest as mf
from corral.store.draft import vocab_problem
from corral.store.layout import StoreLayout
from corral.store.modelfile import ROLES, Modelfile, check_requires, merge_parameters, parameters_of
from corral.store.records import CreateSpec, Progress

# quantizer(source, destination, file_type): the selected backend's quantization, in a runner process
Quantizer = Callable[[str, str, str], None]

# compat(ollama): fs/ggml/type.go ParseFileType accepts these for create's quantize.
QUANT_TYPES = {"q4_k_m": "Q4_K_M", "q4_k_s": "Q4_K_S", "q8_0": "Q8_0"}
QUANTIZABLE = {"F32", "F16", "BF16"}


def _check_quantize(quantize: str | None) -> str | None:
    if not quantize:
        return None
    label = QUANT_TYPES.get(quantize.strip().lower())
    if label is None:
        raise InvalidRequestError(f'unsupported quantization type "{quantize[:40]}" '
                                  "(supported: q4_K_M, q4_K_S, q8_0)")
    return label


def _check_files(files: dict[str, str], what: str) -> dict[str, str]:
    out = {}
    for fname, digest in files.items():
        norm = posixpath.normpath(fname) if fname else ""
        if (not fname or fname.startswith(("/", "\\")) or "\\" in fname or "\x00" in fname
                or norm.startswith("..") or norm == "." or ":" in fname.split("/")[0]):
            raise InvalidRequestError(f'invalid {what} file name "{fname[:80]}": must be a relative path')
        if not digest:
            raise InvalidRequestError(f'{what} file "{fname[:80]}" has an empty digest')
        out[fname] = _blobs.normalize_digest(digest)
    return out


def _put_bytes(store: StoreLayout, data: bytes) -> tuple[str, bool]:
    return _blobs.write_blob(store.blobs_dir, None, [data])


def _layer_progress(digest: str, created: bool) -> Progress:
    return Progress(("creating new layer " if created else "using existing layer ") + digest)


def create(store: StoreLayout, name: str, spec: CreateSpec, quantize: str | None = None, *,
           quantizer: Quantizer | None = None, draft_quantize: str | None = None) -> Iterator[Progress]:
    """Build the layers, write the config and the manifest; yields Ollama's create statuses.

    ``FROM`` names are read through ``store.get`` (the ``Store`` imports the embedded default model
    there); ``quantize`` and ``draft_quantize`` need ``quantizer``. A draft model (``draft_files``, or
    the FROM model's) is stored as a draft layer when its vocabulary is the model's.

    Raises:
        InvalidModelNameError, InvalidRequestError, InvalidModelFileError, ModelNotFoundError.
    """
    target = parse_name(name)
    qlabel = _check_quantize(quantize)
    dlabel = _check_quantize(draft_quantize)
    named = _check_names(spec)
    files = _check_files(spec.files, "model")
    adapters = _check_files(spec.adapters, "adapter")
    drafts = _check_files(spec.draft_files, "draft")
    if len(drafts) > 1:
        raise InvalidRequestError("a model takes one draft model: give DRAFT one GGUF file")
    if dlabel and not drafts:
        raise InvalidRequestError("draft_quantize requires a draft model (DRAFT, draft_files)")
    for digest in [*files.values(), *adapters.values(), *drafts.values()]:
        if not store.has_blob(digest):
            raise InvalidRequestError(
                f"blob {digest} not found; upload it with POST /api/blobs/{digest} first")
    store.ensure_dirs()
    layers: list[mf.Layer] = []
    base: dict[str, Any] = {"params": {}, "template": None, "system": None, "messages": None, "license": None,
                            "config": {}}
    info: gguf.GGUFInfo | None = None
    with store.pinned([*files.values(), *adapters.values(), *drafts.values()]):
        if files:
            yield Progress("parsing GGUF")
            for fname, digest in files.items():
                finfo = _read(store, digest, fname)
                is_projector = finfo.architecture == "clip"
                layers.append(mf.Layer(mf.PROJECTOR if is_projector else mf.MODEL, digest,
                                       store.blob_path(digest).stat().st_size))
                yield _layer_progress(digest, False)
                if not is_projector and info is None:
                    info = finfo
            if info is None:
                raise InvalidRequestError("files hold no model GGUF (only projectors)")
        elif spec.from_:
            if spec.from_.startswith(("/", ".", "~")) or "\\" in spec.from_:
                raise InvalidRequestError("from must name a model; upload local files with /api/blobs and "
                                          "list them in files")
            parent = store.get(spec.from_)
            for layer in parent.manifest.layers:
                if layer.media_type in (mf.MODEL, mf.PROJECTOR, mf.ADAPTER) or \
                        layer.media_type == mf.DRAFT and not drafts:  # a new DRAFT replaces the parent's
                    layers.append(mf.Layer(layer.media_type, layer.digest, layer.size,
                                           from_=layer.from_ or parent.name.full, name=layer.name))
            base = {"params": parent.params, "template": parent.template, "system": parent.system,
                    "messages": parent.messages or None, "license": parent.license or None,
                    "config": parent.config}
            if parent.model_path is None:
                raise InvalidRequestError(f'model "{parent.display}" has no model weights')
            info = _read(store, parent.model_digest or "", parent.display)
        else:
            raise InvalidRequestError("neither from nor files was specified")
        with store.pinned([layer.digest for layer in layers]):
            draft_config = yield from _draft_layer(store, drafts, layers)
            if qlabel:
                info, layers = yield from _quantize(store, quantizer, info, layers, qlabel, mf.MODEL)
            if dlabel:
                _, layers = yield from _quantize(store, quantizer, _read(store, _digest_of(layers, mf.DRAFT),
                                                                         "draft"), layers, dlabel, mf.DRAFT)
            for fname, digest in adapters.items():
                kind = _read(store, digest, fname).kv.get("general.type")
                if kind != "adapter":  # llama.cpp would refuse it at every load; say so once, here
                    raise InvalidRequestError(f"adapter {fname} is not a LoRA adapter GGUF (its general.type "
                                              f"is {kind!r}, not 'adapter')")
                layers.append(mf.Layer(mf.ADAPTER, digest, store.blob_path(digest).stat().st_size))
            yield from _text_layers(store, spec, base, layers)
            names = _inherited(named, base["config"])
            config = mf.make_config(
                family=info.architecture, families=[info.architecture] if info.architecture else [],
                model_type=gguf.human_number(int(info.kv.get("general.parameter_count") or info.n_params)),
                file_type=gguf.quantization(info), layer_digests=[layer.digest for layer in layers],
                renderer=names["renderer"], parser=names["parser"], requires=names["requires"],
                draft=draft_config,
            )
            cdigest, created = _put_bytes(store, config)
            yield _layer_progress(cdigest, created)
            manifest = mf.Manifest(config=mf.Layer(mf.CONFIG_MEDIA_TYPE, cdigest, len(config)), layers=layers)
            yield Progress("writing manifest")
            store.write_manifest(target, manifest)
    yield Progress("success")


def _check_names(spec: CreateSpec) -> dict[str, str]:
    """RENDERER, PARSER and REQUIRES checked: a name corral has no renderer or parser for is a 400.

    compat(ollama): Ollama stores any name and falls back silently at run time; corral says so now.
    """
    from corral.prompts.formats import PARSER_NAMES
    from corral.prompts.renderers import RENDERERS

    out: dict[str, str] = {}
    for field, known in (("renderer", RENDERERS), ("parser", PARSER_NAMES)):
        value = getattr(spec, field)
        if value:
            if value not in known:
                raise InvalidRequestError(
                    f'unknown {field} "{value[:40]}"; corral has {", ".join(sorted(known))}')
            out[field] = value
    if spec.requires:
        try:
            out["requires"] = check_requires(spec.requires)
        except ValueError as exc:
            raise InvalidRequestError(str(exc)) from None
    return out


def _inherited(named: dict[str, str], parent_config: dict[str, Any]) -> dict[str, str]:
    """compat(ollama): a name the request leaves empty comes from the FROM model's config."""
    out: dict[str, str] = {}
    for field in ("renderer", "parser", "requires"):
        value = named.get(field) or parent_config.get(field)
        out[field] = value if isinstance(value, str) else ""
    return out


def _digest_of(layers: list[mf.Layer], media_type: str) -> str:
    return next(layer.digest for layer in layers if layer.media_type == media_type)


def _draft_layer(store: StoreLayout, drafts: dict[str, str],
                 layers: list[mf.Layer]) -> Generator[Progress, None, dict[str, str] | None]:
    """Add the draft layer for ``drafts`` (one GGUF) after checking it can draft for the model in
    ``layers``; the config's ``draft`` entry (as Ollama writes it) for the draft layer, new or inherited."""
    model = store.blob_path(_digest_of(layers, mf.MODEL))
    for fname, digest in drafts.items():
        dinfo = _read(store, digest, fname)
        if dinfo.architecture == "clip" or dinfo.kv.get("general.type") == "adapter":
            raise InvalidRequestError(f"draft {fname}: a draft must be a language model, not a projector or "
                                      "an adapter")
        problem = vocab_problem(model, store.blob_path(digest))
        if problem:
            raise InvalidRequestError(f"draft {fname} cannot draft for this model: {problem}; a draft model "
                                      "must use the model's own tokenizer")
        layers.append(mf.Layer(mf.DRAFT, digest, store.blob_path(digest).stat().st_size))
        yield _layer_progress(digest, False)
    draft = next((layer for layer in layers if layer.media_type == mf.DRAFT), None)
    if draft is None:
        return None
    arch = _read(store, draft.digest, "draft").architecture
    return {"model_format": "gguf", "architecture": arch}


def _read(store: StoreLayout, digest: str, label: str) -> gguf.GGUFInfo:
    try:
        return gguf.read_gguf_info(store.blob_path(digest), keep_arrays=False)
    except InvalidModelFileError as exc:
        raise InvalidModelFileError(f"{label}: {exc}") from None


def _text_layers(store: StoreLayout, spec: CreateSpec, base: dict[str, Any],
                 layers: list[mf.Layer]) -> Iterator[Progress]:
    template = spec.template if spec.template is not None else base["template"]
    system = spec.system if spec.system is not None else base["system"]
    license_ = spec.license if spec.license is not None else base["license"]
    messages = spec.messages if spec.messages is not None else base["messages"]
    try:
        params = merge_parameters(base["params"], spec.parameters)
    except ValueError as exc:
        raise InvalidRequestError(str(exc)) from None
    blobs: list[tuple[str, bytes]] = []
    if template:
        if spec.template is not None:  # a new TEMPLATE: refused here if it cannot render
            try:
                gotemplate.load(template)  # a syntax error here, at once, with its line
                renderpool.validate_go(template)  # its test renders: untrusted work, in a worker
            except TemplateError as exc:
                raise TemplateError(f"invalid TEMPLATE: {exc.message}") from None
        blobs.append((mf.TEMPLATE, template.encode()))
    if system:
        blobs.append((mf.SYSTEM, system.encode()))
    for text in [license_] if isinstance(license_, str) else (license_ or []):
        blobs.append((mf.LICENSE, str(text).encode()))
    if params:
        blobs.append((mf.PARAMS, json.dumps(params).encode()))
    if messages:
        for m in messages:
            if m.role not in ROLES:
                raise InvalidRequestError(
                    f'invalid message role "{m.role[:40]}"; must be one of system, user, assistant')
        items = [{"role": m.role, "content": m.content} for m in messages]
        blobs.append((mf.MESSAGES, json.dumps(items).encode()))
    for media, data in blobs:
        digest, created = _put_bytes(store, data)
        layers.append(mf.Layer(media, digest, len(data)))
        yield _layer_progress(digest, created)


def _quantize(store: StoreLayout, quantizer: Quantizer | None, info: gguf.GGUFInfo, layers: list[mf.Layer],
              qlabel: str, media_type: str
              ) -> Generator[Progress, None, tuple[gguf.GGUFInfo, list[mf.Layer]]]:
    """Replace the ``media_type`` layer (the model, or the draft) by its quantized form."""
    what = "draft model" if media_type == mf.DRAFT else "model"
    current = gguf.quantization(info)
    if current not in QUANTIZABLE:
        raise InvalidRequestError(f"quantization is only supported for F16, BF16 and F32 models; "
                                  f"this {what} is {current}")
    if quantizer is None:
        raise InvalidRequestError("quantization needs a backend; none is available in this process")
    model = next(i for i, layer in enumerate(layers) if layer.media_type == media_type)
    src = store.blob_path(layers[model].digest)
    yield Progress(f"quantizing {current} {what} to {qlabel}", digest="0", total=src.stat().st_size,
                   completed=0)
    tmp = _blobs.temp_path(store.blobs_dir, "quantize")
    try:
        try:
            quantizer(str(src), str(tmp), qlabel.lower().replace("_k_", "_K_"))
        except OSError as exc:
            raise _blobs.storage_error(exc, "quantizing") from exc
        yield Progress("verifying conversion")
        new_info = gguf.read_gguf_info(tmp, keep_arrays=False)
        digest, size = _blobs.sha256_file(tmp)
        final = store.blob_path(digest)
        with _blobs.blob_lock(store.blobs_dir, digest):
            created = not final.is_file()
            if created:
                _blobs.commit_file(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    yield _layer_progress(digest, created)
    layers = [*layers[:model], mf.Layer(media_type, digest, size), *layers[model + 1 :]]
    return new_info, layers


# ---- Modelfile → CreateSpec (used by `corral create`, client side) ---------------------------------
def spec_from_modelfile(modelfile: Modelfile, base_dir: Path) -> tuple[CreateSpec, dict[str, Path]]:
    """Turn a parsed Modelfile into a CreateSpec plus the local files to upload first.

    Returns:
        (spec, uploads) where ``uploads`` maps each digest in ``spec.files``/``spec.adapters`` to the
        local path whose bytes must be uploaded (``POST /api/blobs/<digest>``) before create.
    Raises:
        ModelfileError: a FROM/ADAPTER path that is missing, a directory, or not a GGUF file.
    """
    spec = CreateSpec()
    uploads: dict[str, Path] = {}
    froms = modelfile.all("from")
    for frm in froms:
        local = _local_path(frm.value, base_dir)
        if local is not None:
            digest = _hash_local(local, frm.line)
            spec.files[local.name] = digest
            uploads[digest] = local
        elif len(froms) > 1:
            raise ModelfileError(f"Modelfile line {frm.line}: with several FROM lines each must be a GGUF "
                                 f"file (a model and its projector), not the model name {frm.value!r}")
        else:
            parse_name(frm.value)
            spec.from_ = frm.value
    for cmd in modelfile.all("adapter"):
        path = _local_path(cmd.value, base_dir, must=True)
        assert path is not None
        digest = _hash_local(path, cmd.line)
        spec.adapters[path.name] = digest
        uploads[digest] = path
    for cmd in modelfile.all("draft"):
        path = _local_path(cmd.value, base_dir, must=True)
        assert path is not None
        check_draft_path(path, [_local_path(f.value, base_dir) for f in froms], cmd.line)
        digest = _hash_local(path, cmd.line)
        spec.draft_files[path.name] = digest
        uploads[digest] = path
    if (c := modelfile.first("template")) is not None:
        spec.template = c.value
    if (c := modelfile.first("system")) is not None:
        spec.system = c.value
    licenses = [c.value for c in modelfile.all("license")]
    if licenses:
        spec.license = licenses
    params = parameters_of(modelfile)
    if params:
        spec.parameters = params
    for field in ("renderer", "parser", "requires"):
        if (c := modelfile.first(field)) is not None:
            setattr(spec, field, c.value)
    msgs = [{"role": c.args.lower(), "content": c.value} for c in modelfile.all("message")]
    if msgs:
        from corral.conversation import Message

        spec.messages = [msgspec.convert(m, Message) for m in msgs]
    return spec, uploads


def check_draft_path(draft: Path, froms: list[Path | None], line: int) -> None:
    """compat(ollama): DRAFT must not name the file FROM names (parser.rejectMatchingLocalPath)."""
    for frm in froms:
        if frm is not None and frm.exists() and draft.exists() and draft.resolve() == frm.resolve():
            raise ModelfileError(f"Modelfile line {line}: DRAFT must not reference the same local path as "
                                 f"FROM: {draft}")


def _local_path(value: str, base_dir: Path, must: bool = False) -> Path | None:
    candidate = Path(value).expanduser()
    if not candidate.is_absolute():
        candidate = base_dir / candidate
    looks_local = value.startswith(("/", "./", "../", "~", ".\\")) or value.lower().endswith(".gguf")
    if candidate.exists() or looks_local or must:
        return candidate
    return None


def _hash_local(path: Path, line: int) -> str:
    if path.is_dir():
        raise ModelfileError(f"Modelfile line {line}: {path.name} is a directory; only GGUF files can be "
                             "imported (convert safetensors to GGUF first)")
    try:
        gguf.read_gguf_info(path, keep_arrays=False)
    except InvalidModelFileError as exc:
        raise ModelfileError(f"Modelfile line {line}: {path.name}: {exc}") from None
    return _blobs.sha256_file(path)[0]
