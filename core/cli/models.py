"""Model commands that talk to the server: list, show, cp, rm, pull, push (create lives in create.py)."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from corral.cli import tables
from corral.cli.common import connect


def list_models(
    as_json: Annotated[bool, typer.Option("--json", help="Print the server's JSON for scripts.")] = False,
) -> None:
    """List the models in the store (NAME, ID, SIZE, MODIFIED), newest first."""
    tables.list_models(as_json)


# ---- show ----------------------------------------------------------------------------------------
def _section(title: str, rows: list[tuple[str, str]]) -> list[str]:
    if not rows:
        return []
    width = max(len(k) for k, _ in rows)
    return [f"  {title}"] + [f"    {k.ljust(width)}    {v}".rstrip() for k, v in rows] + [""]


def _model_rows(info: dict[str, Any]) -> list[tuple[str, str]]:
    details = info.get("details") or {}
    mi = info.get("model_info") or {}
    arch = mi.get("general.architecture") or details.get("family") or ""
    rows = [("architecture", arch), ("parameters", details.get("parameter_size") or "")]
    ctx = mi.get(f"{arch}.context_length") or details.get("context_length")
    emb = mi.get(f"{arch}.embedding_length") or details.get("embedding_length")
    if ctx:
        rows.append(("context length", str(ctx)))
    if emb:
        rows.append(("embedding length", str(emb)))
    rows.append(("quantization", details.get("quantization_level") or ""))
    rows.append(("requires", info.get("requires") or ""))  # compat(ollama): shown when the model says
    return [r for r in rows if r[1]]


def _projector_rows(info: dict[str, Any]) -> list[tuple[str, str]]:
    pi = info.get("projector_info") or {}
    if not pi:
        return []
    from corral.gguf import human_number  # gguf-py (and numpy) only for a model with a projector

    arch = str(pi.get("general.architecture") or "")
    count = pi.get("general.parameter_count")
    rows = [("architecture", arch), ("parameters", human_number(int(count)) if count else ""),
            ("embedding length", str(pi.get(f"{arch}.vision.embedding_length") or "")),
            ("dimensions", str(pi.get(f"{arch}.vision.projection_dim") or ""))]
    return [r for r in rows if r[1]]


def render_show(info: dict[str, Any], *, verbose: bool = False) -> str:
    """The default `corral show` text: Model, Capabilities, Projector, Parameters, System, License."""
    out = _section("Model", _model_rows(info))
    caps = info.get("capabilities") or []
    out += _section("Capabilities", [(c, "") for c in caps])
    out += _section("Projector", _projector_rows(info))  # compat(ollama): as `ollama show` prints it
    lines = (info.get("parameters") or "").splitlines()
    params = [tuple(line.split(None, 1)) for line in lines if line.strip()]
    out += _section("Parameters", [(p[0], p[1] if len(p) > 1 else "") for p in params])
    system = (info.get("system") or "").strip()
    if system:
        out += _section("System", [(line, "") for line in system.splitlines()[:2]])
    lic = info.get("license") or ""
    lic_text = "\n".join(lic) if isinstance(lic, list) else lic
    if lic_text.strip():
        out += _section("License", [(line.strip(), "") for line in lic_text.strip().splitlines()[:2]])
    if verbose:
        mi = info.get("model_info") or {}
        out += _section("Metadata", [(k, json.dumps(v) if not isinstance(v, str) else v)
                                     for k, v in sorted(mi.items())])
        tensors = info.get("tensors") or []
        out += _section("Tensors", [(t.get("name", ""), f"{t.get('type', '')}  {t.get('shape', '')}")
                                    for t in tensors])
    return "\n".join(out)


def fetch_show(client: Any, model: str, *, verbose: bool = False) -> dict[str, Any]:
    return client.request("POST", "/api/show", {"model": model, "verbose": verbose}) or {}


def show(
    model: Annotated[str, typer.Argument(help="Model name, e.g. gemma3:270m.")],
    license: Annotated[bool, typer.Option("--license", help="Show the license.")] = False,
    modelfile: Annotated[bool, typer.Option("--modelfile", help="Show a Modelfile recreating it.")] = False,
    parameters: Annotated[bool, typer.Option("--parameters", help="Show the parameters.")] = False,
    template: Annotated[bool, typer.Option("--template", help="Show the prompt template.")] = False,
    system: Annotated[bool, typer.Option("--system", help="Show the system message.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show metadata and tensors too.")] = False,
) -> None:
    """Show information about a model."""
    from corral.cli.common import UsageError

    picked = [n for n, on in (("license", license), ("modelfile", modelfile), ("parameters", parameters),
                              ("template", template), ("system", system)) if on]
    if len(picked) > 1:
        raise UsageError("only one of --license, --modelfile, --parameters, --template, --system at a time")
    info = fetch_show(connect(), model, verbose=verbose)
    if picked:
        value = info.get(picked[0]) or ""
        if isinstance(value, list):
            value = "\n".join(value)
        sys.stdout.write(value if value.endswith("\n") or not value else value + "\n")
        return
    sys.stdout.write(render_show(info, verbose=verbose) + "\n")


# ---- cp / rm -------------------------------------------------------------------------------------
def cp(
    source: Annotated[str, typer.Argument(help="Existing model.")],
    destination: Annotated[str, typer.Argument(help="New name.")],
) -> None:
    """Copy a model under a new name (the blobs are shared)."""
    connect().request("POST", "/api/copy", {"source": source, "destination": destination})
    typer.echo(f"copied '{source}' to '{destination}'")


def rm(models: Annotated[list[str], typer.Argument(help="Models to delete.")]) -> None:
    """Delete one or more models."""
    client = connect()
    for name in models:
        client.request("DELETE", "/api/delete", {"model": name})
        typer.echo(f"deleted '{name}'")


# ---- pull / push ---------------------------------------------------------------------------------
def transfer(client: Any, path: str, model: str, *, insecure: bool = False) -> None:
    """Run a pull or push and draw its progress; Ctrl-C stops it and leaves a resumable partial."""
    from corral.cli.progress import follow
    from corral.errors import CorralError

    stream = client.stream("POST", path, {"model": model, "insecure": insecure, "stream": True})
    try:
        last = follow(stream)
    except KeyboardInterrupt:
        stream.close()
        verb = "pull" if path.endswith("pull") else "push"
        sys.stderr.write(f"\n{verb} interrupted; run 'corral {verb} {model}' again to resume\n")
        raise typer.Exit(130) from None
    if not last or last.get("status") != "success":
        raise CorralError(f"the server ended the {path.rsplit('/', 1)[-1]} of {model!r} without success")


def pull(
    model: Annotated[str, typer.Argument(help="Model name, e.g. gemma3:270m.")],
    insecure: Annotated[bool, typer.Option("--insecure", help="Allow plain-HTTP registries.")] = False,
) -> None:
    """Pull a model from a registry."""
    transfer(connect(), "/api/pull", model, insecure=insecure)


def push(
    model: Annotated[str, typer.Argument(help="Model name, e.g. myname/mymodel:latest.")],
    insecure: Annotated[bool, typer.Option("--insecure", help="Allow plain-HTTP registries.")] = False,
) -> None:
    """Push a model to a registry."""
    transfer(connect(), "/api/push", model, insecure=insecure)


def register(app: typer.Typer) -> None:
    from corral.cli import create

    panel = "Models"
    app.command("list", rich_help_panel=panel)(list_models)
    app.command("ls", hidden=True, help="Alias of 'list'.")(list_models)
    app.command("show", rich_help_panel=panel)(show)
    app.command("pull", rich_help_panel=panel)(pull)
    app.command("push", rich_help_panel=panel)(push)
    app.command("create", rich_help_panel=panel)(create.create)
    app.command("cp", rich_help_panel=panel)(cp)
    app.command("rm", rich_help_panel=panel)(rm)
