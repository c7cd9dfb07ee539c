"""One chat turn on the terminal, shared by `corral run` and its REPL: word wrap, thinking, metrics,
the user's turn with its attachments, and the model check (pulling a missing model first)."""

from __future__ import annotations

import shutil
import sys
from typing import Any

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


def infer_think(think: bool | str | None, capabilities: list[str]) -> bool | str | None:
    """compat(ollama): without --think a thinking model is asked to think (cmd.go inferThinkingOption)."""
    if think is None and "thinking" in capabilities:
        return True
    return think


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
