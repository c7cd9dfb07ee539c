"""`corral run MODEL [PROMPT]`: pull if missing, answer one prompt (or piped stdin), or open the REPL."""

from __future__ import annotations

import shutil
import sys
from typing import Annotated, Any

import typer

from corral.cli.common import UsageError, connect
from corral.errors import CorralError

THINK_VALUES = ("true", "false", "low", "medium", "high", "max")


class WordWrapper:
    """Wraps streamed text at word boundaries for a terminal of ``width`` columns.

    A word is held until it ends, and the spaces before it until the next word shows whether it
    fits, so a wrapped line neither ends nor starts with a space.
    """

    def __init__(self, width: int) -> None:
        self.width = max(10, width)
        self.col = 0
        self.word = ""
        self.spaces = ""

    def feed(self, text: str) -> str:
        out: list[str] = []
        for ch in text:
            if ch == "\n":
                out.append(self._flush_word() + "\n")
                self.col, self.spaces = 0, ""
            elif ch in " \t":
                out.append(self._flush_word())
                self.spaces += ch
            else:
                self.word += ch
                if len(self.word) >= self.width:  # a word longer than a line: hard break
                    out.append(self._flush_word())
        return "".join(out)

    def _flush_word(self) -> str:
        if not self.word:
            return ""
        w, lead = self.word, self.spaces
        self.word, self.spaces = "", ""
        if self.col > 0 and self.col + len(lead) + len(w) > self.width:
            self.col = len(w)
            return "\n" + w
        self.col += len(lead) + len(w)
        return lead + w

    def flush(self) -> str:
        return self._flush_word()


class Answer:
    """Prints one streamed chat answer: thinking (dim), content (wrapped), then metrics if verbose."""

    def __init__(self, *, wordwrap: bool, hidethinking: bool, verbose: bool, gap: bool = True) -> None:
        tty = sys.stdout.isatty()
        self.wrap = WordWrapper(shutil.get_terminal_size().columns - 1) if wordwrap and tty else None
        self.color = tty
        self.hidethinking = hidethinking
        self.verbose = verbose
        self.gap = gap
        self.content: list[str] = []
        self.thinking: list[str] = []
        self.in_thinking = False
        self.final: dict[str, Any] = {}

    def _write(self, text: str) -> None:
        if self.wrap is not None:
            text = self.wrap.feed(text)
        sys.stdout.write(text)
        sys.stdout.flush()

    def feed(self, chunk: dict[str, Any]) -> None:
        msg = chunk.get("message") or {}
        think = msg.get("thinking") or ""
        text = msg.get("content") or ""
        if think:
            self.thinking.append(think)
            if not self.hidethinking:
                if not self.in_thinking:
                    self._write("\x1b[2mThinking...\n" if self.color else "Thinking...\n")
                    self.in_thinking = True
                self._write(think)
        if text:
            if self.in_thinking:
                self._end_thinking()
            self.content.append(text)
            self._write(text)
        if chunk.get("done"):
            self.final = chunk

    def _end_thinking(self) -> None:
        self._write("\n...done thinking.\n\n" + ("\x1b[0m" if self.color else ""))
        self.in_thinking = False

    def finish(self, *, interrupted: bool = False) -> None:
        if self.in_thinking:
            self._end_thinking()
        if self.wrap is not None:
            sys.stdout.write(self.wrap.flush())
        text = "".join(self.content)
        if (self.content or self.thinking) and (interrupted or not text.endswith("\n")):
            sys.stdout.write("\n")
        sys.stdout.flush()
        if self.verbose and self.final and not interrupted:
            from corral.cli.common import metrics_summary

            sys.stderr.write(metrics_summary(self.final) + "\n")
        if self.gap and not interrupted:  # the REPL leaves a blank line before the next prompt
            sys.stdout.write("\n")
        sys.stdout.flush()


def chat_once(client: Any, body: dict[str, Any], answer: Answer) -> bool:
    """Stream one /api/chat answer into ``answer``. False if the user stopped it with Ctrl-C."""
    stream = client.stream("POST", "/api/chat", {**body, "stream": True})
    try:
        for chunk in stream:
            answer.feed(chunk)
    except KeyboardInterrupt:
        # Dropping the connection is what tells the server to stop generating.
        stream.close()
        answer.finish(interrupted=True)
        return False
    except CorralError:
        answer.finish(interrupted=True)  # end the half-printed line before the error
        raise
    answer.finish()
    return True


def user_message(text: str, caps: list[str]) -> dict[str, object]:
    """A user turn; for a model that reads images or audio, file paths in ``text`` become attachments."""
    if "vision" not in caps and "audio" not in caps:
        return {"role": "user", "content": text}
    from corral.cli.attach import attach_media
    from corral.cli.common import load_config

    text, images = attach_media(text, load_config().media_limits)
    return {"role": "user", "content": text, **({"images": images} if images else {})}


def parse_think(value: str | None) -> bool | str | None:
    if value is None:
        return None
    v = value.strip().lower()
    if v not in THINK_VALUES:
        raise UsageError(f"invalid --think value {value!r}: use true, false, low, medium, high or max")
    return {"true": True, "false": False}.get(v, v)


def infer_think(think: bool | str | None, capabilities: list[str]) -> bool | str | None:
    """compat(ollama): without --think a thinking model is asked to think (cmd.go inferThinkingOption)."""
    if think is None and "thinking" in capabilities:
        return True
    return think


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


def ensure_model(client: Any, model: str, *, insecure: bool = False) -> dict[str, Any]:
    """/api/show for ``model``; a model the store lacks is pulled first, with progress, as Ollama does."""
    from corral.cli.models import fetch_show, transfer
    from corral.errors import ModelNotFoundError

    try:
        return fetch_show(client, model)
    except ModelNotFoundError:
        pass
    transfer(client, "/api/pull", model, insecure=insecure)
    return fetch_show(client, model)


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
    if text or piped:
        answer = Answer(wordwrap=not nowordwrap, hidethinking=hidethinking, verbose=verbose, gap=False)
        if not chat_once(client, {**body, "messages": [user_message(text, caps)]}, answer):
            raise typer.Exit(130)
        return
    if not sys.stdout.isatty():
        # compat(ollama): output that is not a terminal never gets the REPL; with nothing to say
        # the model is only loaded.
        client.request("POST", "/api/chat", {**body, "messages": [], "stream": False})
        return
    from corral.cli.repl import Repl

    Repl(client, model, info, format=format or None, think=think_value, keepalive=keep, verbose=verbose,
         wordwrap=not nowordwrap, hidethinking=hidethinking, think_auto=think is None).loop()


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
