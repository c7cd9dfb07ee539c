"""`corral run MODEL [PROMPT]`: pull if missing, answer one prompt (or piped stdin), or open the REPL."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from corral.cli.chat import THINK_VALUES, Answer, chat_once, ensure_model, infer_think, user_message
from corral.cli.common import UsageError, connect
from corral.cli.loading import load_model


def parse_think(value: str | None) -> bool | str | None:
    if value is None:
        return None
    v = value.strip().lower()
    if v not in THINK_VALUES:
        raise UsageError(f"invalid --think value {value!r}: use true, false, low, medium, high or max")
    return {"true": True, "false": False}.get(v, v)


def check_keepalive(value: str | None) -> str | None:
    if value is None:
        return None
    from corral.config import parse_duration

    try:
        parse_duration(value)
    except ValueError as exc:
        raise UsageError(f"invalid --keepalive {value!r}: {exc} "
                         "(use e.g. 5m, 1h, or -1m for forever)") from None
    return value


def run(
    model: Annotated[str, typer.Argument(help="Model name, e.g. gemma3:270m.")],
    prompt: Annotated[list[str] | None, typer.Argument(help="Prompt; without one (and no piped stdin), "
                                                            "an interactive chat starts.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="Show timings and token rates.")] = False,
    format: Annotated[str | None, typer.Option("--format", help="Response format: json.")] = None,
    think: Annotated[str | None, typer.Option(
        "--think", metavar="[true|false|low|medium|high|max]",
        help="Let thinking models think (--think alone = true).")] = None,
    hidethinking: Annotated[bool, typer.Option("--hidethinking", help="Hide the thinking text.")] = False,
    keepalive: Annotated[str | None, typer.Option(
        "--keepalive", help="How long the model stays loaded after the answer, e.g. 5m, 1h.")] = None,
    nowordwrap: Annotated[bool, typer.Option("--nowordwrap", help="Do not wrap words.")] = False,
    insecure: Annotated[bool, typer.Option("--insecure", help="Allow plain-HTTP registries.")] = False,
    backend: Annotated[str | None, typer.Option(help="Backend for a server this command starts "
                                                     "(see 'corral backends').")] = None,
) -> None:
    """Run a model: answer PROMPT and exit, or chat interactively."""
    if format not in (None, "", "json"):
        raise UsageError(f"invalid --format {format!r}: only 'json' is supported")
    think_value = parse_think(think)
    keep = check_keepalive(keepalive)
    text = " ".join(prompt or [])
    piped = not sys.stdin.isatty()
    if piped:
        data = sys.stdin.read()
        text = f"{data} {text}".strip() if text else data
    client = connect(backend=backend)
    info = ensure_model(client, model, insecure=insecure)
    caps = info.get("capabilities") or []
    think_value = infer_think(think_value, caps)
    if "embedding" in caps and "completion" not in caps:
        if not text:
            raise UsageError(f"{model} is an embedding model: give it text to embed")
        out = client.request("POST", "/api/embed", {"model": model, "input": text,
                                                     **({"keep_alive": keep} if keep else {})})
        import json

        sys.stdout.write(json.dumps((out or {}).get("embeddings", [[]])[0]) + "\n")
        return
    opts = {"format": format or None, "think": think_value, "keep_alive": keep}
    body = {"model": model, **{k: v for k, v in opts.items() if v is not None}}
    extras = {"keep_alive": keep} if keep else {}
    if text or piped:
        if not unloads(keep):  # load first, showing progress (keep_alive 0 would unload it instead)
            load_model(client, model, extras)
        answer = Answer(wordwrap=not nowordwrap, hidethinking=hidethinking, verbose=verbose, gap=False)
        if not chat_once(client, {**body, "messages": [user_message(text, caps)]}, answer):
            raise typer.Exit(130)
        return
    if not sys.stdout.isatty():
        # compat(ollama): output that is not a terminal never gets the REPL; with nothing to say
        # the model is only loaded.
        load_model(client, model, extras)
        return
    from corral.cli.repl import Repl

    Repl(client, model, info, format=format or None, think=think_value, keepalive=keep, verbose=verbose,
         wordwrap=not nowordwrap, hidethinking=hidethinking, think_auto=think is None).loop()


def unloads(keepalive: str | None) -> bool:
    """True when ``--keepalive`` asks for the model to be unloaded as soon as it is idle."""
    if keepalive is None:
        return False
    from corral.config import parse_duration

    return parse_duration(keepalive) <= 0


def normalize_think(args: list[str]) -> list[str]:
    """``--think`` with no value means ``--think=true`` (Ollama's optional-value flag)."""
    out = list(args)
    for i, a in enumerate(out):
        if a == "--":
            break
        if a == "--think" and (i + 1 >= len(out) or out[i + 1].lower() not in THINK_VALUES):
            out[i] = "--think=true"
    return out


def register(app: typer.Typer) -> None:
    app.command("run", rich_help_panel="Running")(run)
