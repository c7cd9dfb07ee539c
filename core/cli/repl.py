"""The interactive chat of `corral run`: line editing, history, \"\"\" blocks and the /commands."""

from __future__ import annotations

import sys
from typing import Any

from corral.cli.chat import THINK_VALUES, Answer, chat_once, ensure_model, infer_think, user_message
from corral.errors import CorralError

HELP = """Available Commands:
  /set            Set session variables
  /show           Show model information
  /load <model>   Load a session or model
  /save <model>   Save your current session
  /clear          Clear session context
  /bye            Exit
  /?, /help       Help for a command
  /? shortcuts    Help for keyboard shortcuts

Use \"\"\" to begin a multi-line message.
"""

HELP_SET = """Available Commands:
  /set parameter ...     Set a parameter
  /set system <string>   Set system message
  /set history           Enable history
  /set nohistory         Disable history
  /set wordwrap          Enable wordwrap
  /set nowordwrap        Disable wordwrap
  /set format json       Enable JSON mode
  /set noformat          Disable formatting
  /set verbose           Show LLM stats
  /set quiet             Disable LLM stats
  /set think [level]     Enable thinking (true, low, medium, high, max)
  /set nothink           Disable thinking
"""

HELP_PARAMS = """Parameters:
  /set parameter seed <int>             Random number seed
  /set parameter num_predict <int>      Max number of tokens to predict
  /set parameter top_k <int>            Pick from top k num of tokens
  /set parameter top_p <float>          Pick token based on sum of probabilities
  /set parameter min_p <float>          Pick token based on top token probability * min_p
  /set parameter num_ctx <int>          Set the context size
  /set parameter temperature <float>    Set creativity level
  /set parameter repeat_penalty <float> How strongly to penalize repetitions
  /set parameter repeat_last_n <int>    Set how far back to look for repetitions
  /set parameter num_gpu <int>          The number of layers to send to the GPU
  /set parameter stop <string> <string> ...   Set the stop parameters
"""

HELP_SHOW = """Available Commands:
  /show info         Show details for this model
  /show license      Show model license
  /show modelfile    Show Modelfile for this model
  /show parameters   Show parameters for this model
  /show system       Show system message
  /show template     Show prompt template
"""

HELP_KEYS = """Available keyboard shortcuts:
  Ctrl + a            Move to the beginning of the line (Home)
  Ctrl + e            Move to the end of the line (End)
  Alt + b             Move back (left) one word
  Alt + f             Move forward (right) one word
  Ctrl + k            Delete the sentence after the cursor
  Ctrl + u            Delete the sentence before the cursor
  Ctrl + w            Delete the word before the cursor
  Ctrl + l            Clear the screen
  Ctrl + c            Stop the model from responding
  Ctrl + d            Exit (/bye)
"""


def parse_value(text: str) -> Any:
    """A parameter value as the server expects it: int, float, bool, else the text."""
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


class Repl:
    """One interactive session: the model, its messages, and the /set choices."""

    def __init__(self, client: Any, model: str, info: dict[str, Any], *, format: str | None,
                 think: bool | str | None, keepalive: str | None, verbose: bool, wordwrap: bool,
                 hidethinking: bool, think_auto: bool = False) -> None:
        self.client = client
        self.model = model
        self.info = info
        self.format = format
        self.think = think
        self.think_auto = think_auto  # no --think or /set think: each model's capabilities decide
        self.keepalive = keepalive
        self.verbose = verbose
        self.wordwrap = wordwrap
        self.hidethinking = hidethinking
        self.system: str | None = None
        self.options: dict[str, Any] = {}
        self.messages: list[dict[str, Any]] = []
        self.session = self._session()

    # ---- input -----------------------------------------------------------------------------------
    def _session(self) -> Any:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import FileHistory, InMemoryHistory

        from corral.cli.common import load_config

        config = load_config()
        history: Any = InMemoryHistory()
        if not config.nohistory:
            try:
                config.home.mkdir(parents=True, exist_ok=True)
                history = FileHistory(str(config.home / "history"))
            except OSError:  # a read-only home still gets a working prompt
                history = InMemoryHistory()
        return PromptSession(history=history)

    def _read(self) -> str:
        """One message; a line starting with \"\"\" opens a block that ends at the next \"\"\"."""
        line: str = self.session.prompt(">>> ", placeholder=_placeholder())
        if not line.lstrip().startswith('"""'):
            return line
        body = line.lstrip()[3:]
        if body.rstrip().endswith('"""') and body.strip() != "":
            return body.rstrip()[:-3]
        parts = [body] if body else []
        while True:
            more = self.session.prompt("... ")
            if more.rstrip().endswith('"""'):
                parts.append(more.rstrip()[:-3])
                return "\n".join(parts).strip("\n")
            parts.append(more)

    # ---- loop ------------------------------------------------------------------------------------
    def loop(self) -> None:
        self._preload()
        while True:
            try:
                line = self._read()
            except KeyboardInterrupt:
                print("Use Ctrl + d or /bye to exit.")
                continue
            except EOFError:
                print()
                return
            text = line.strip()
            if not text:
                continue
            try:
                if text.startswith("/") and not text.startswith("//"):
                    if self.command(text) is False:
                        return
                    continue
                self.send(line)
            except CorralError as exc:
                print(f"Error: {exc}", file=sys.stderr)

    def _preload(self) -> None:
        from corral.cli.loading import load_model

        load_model(self.client, self.model, self._extras())
        for m in self.info.get("messages") or []:  # the Modelfile's MESSAGEs open the conversation
            self.messages.append({"role": m.get("role"), "content": m.get("content", "")})
            if m.get("role") == "user":
                print(f">>> {m.get('content', '')}")
            elif m.get("role") == "assistant":
                print(f"{m.get('content', '')}\n")

    def _extras(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.keepalive is not None:
            out["keep_alive"] = self.keepalive
        return out

    def send(self, text: str) -> None:
        msgs = list(self.messages)
        if self.system is not None:
            msgs = [{"role": "system", "content": self.system}, *msgs]
        turn = user_message(text, self.info.get("capabilities") or [])
        msgs.append(turn)
        body: dict[str, Any] = {"model": self.model, "messages": msgs, **self._extras()}
        if self.options:
            body["options"] = self.options
        if self.format:
            body["format"] = self.format
        if self.think is not None:
            body["think"] = self.think
        answer = Answer(wordwrap=self.wordwrap, hidethinking=self.hidethinking, verbose=self.verbose)
        finished = chat_once(self.client, body, answer)
        # An interrupted answer is dropped from the context, as Ollama does: the model never said it.
        if finished:  # the images stay in the history: the next turns still see them
            self.messages.append(turn)
            self.messages.append({"role": "assistant", "content": "".join(answer.content)})

    # ---- /commands -------------------------------------------------------------------------------
    def command(self, text: str) -> bool | None:
        """Run one /command. Returns False to leave the REPL."""
        args = text.split()
        cmd = args[0].lower()
        if cmd in ("/bye", "/exit"):
            return False
        if cmd in ("/?", "/help"):
            topic = args[1].lower() if len(args) > 1 else ""
            print({"shortcuts": HELP_KEYS, "shortcut": HELP_KEYS, "set": HELP_SET,
                   "show": HELP_SHOW}.get(topic, HELP))
        elif cmd == "/set":
            self._set(text, args)
        elif cmd == "/show":
            self._show(args)
        elif cmd == "/clear":
            self.messages.clear()
            print("Cleared session context")
        elif cmd == "/load":
            self._load(args)
        elif cmd == "/save":
            self._save(args)
        else:
            print(f"Unknown command '{args[0]}'. Type /? for help")
        return None

    def _set(self, text: str, args: list[str]) -> None:
        if len(args) < 2:
            print(HELP_SET)
            return
        what = args[1].lower()
        flags = {"verbose": ("verbose", True), "quiet": ("verbose", False),
                 "wordwrap": ("wordwrap", True), "nowordwrap": ("wordwrap", False),
                 "noformat": ("format", None), "nothink": ("think", False)}
        if what in flags:
            attr, value = flags[what]
            setattr(self, attr, value)
            self.think_auto = self.think_auto and attr != "think"
            print(f"Set '{what}' mode.")
        elif what in ("history", "nohistory"):
            from prompt_toolkit.history import InMemoryHistory

            if what == "nohistory":
                self.session.history = InMemoryHistory()
            print(f"Set '{what}' mode." if what == "nohistory" else "History is on (CORRAL_NOHISTORY unset).")
        elif what == "format":
            if len(args) < 3 or args[2].lower() != "json":
                print("Invalid or missing format. For 'json' mode use '/set format json'")
                return
            self.format = "json"
            print("Set format to 'json' mode.")
        elif what == "think":
            level = args[2].lower() if len(args) > 2 else "true"
            if level not in THINK_VALUES:
                print(f"Invalid think level '{level}': use true, false, low, medium, high or max")
                return
            self.think = {"true": True, "false": False}.get(level, level)
            self.think_auto = False
            print("Set 'think' mode." if level == "true" else f"Set 'think' mode to '{level}'.")
        elif what == "system":
            self._set_system(text)
        elif what == "parameter":
            self._set_parameter(args[2:])
        else:
            print(f"Unknown command '/set {args[1]}'. Type /? for help")

    def _set_system(self, text: str) -> None:
        value = text.split(None, 2)[2] if len(text.split(None, 2)) > 2 else ""
        value = value.strip()
        if value.startswith('"""'):
            value = value[3:]
            if value.rstrip().endswith('"""'):
                value = value.rstrip()[:-3]
            else:
                lines = [value] if value else []
                while True:
                    more = self.session.prompt("... ")
                    if more.rstrip().endswith('"""'):
                        lines.append(more.rstrip()[:-3])
                        break
                    lines.append(more)
                value = "\n".join(lines)
        elif len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        if not value.strip():
            print("Usage: /set system <message> (or \"\"\" for several lines)")
            return
        self.system = value.strip("\n")
        print("Set system message.")

    def _set_parameter(self, rest: list[str]) -> None:
        if len(rest) < 2:
            print(HELP_PARAMS)
            return
        name, values = rest[0], rest[1:]
        if name == "stop":
            self.options["stop"] = values
            print(f"Set parameter 'stop' to '{', '.join(values)}'")
            return
        self.options[name] = parse_value(" ".join(values))
        print(f"Set parameter '{name}' to '{' '.join(values)}'")

    def _show(self, args: list[str]) -> None:
        from corral.cli.models import fetch_show, render_show

        if len(args) < 2:
            print(HELP_SHOW)
            return
        what = args[1].lower()
        info = fetch_show(self.client, self.model)
        if what == "info":
            print(render_show(info))
        elif what in ("license", "modelfile", "template"):
            value = info.get(what) or ""
            value = "\n".join(value) if isinstance(value, list) else value
            print(value or f"No {what} was specified for this model.")
        elif what == "system":
            print(self.system or info.get("system") or "No system message was specified for this model.")
        elif what == "parameters":
            print("Model defined parameters:")
            print(info.get("parameters") or "No parameters were specified for this model.")
            if self.options:
                print("\nUser defined parameters:")
                for k, v in self.options.items():
                    print(f"{k:<30} {v}")
        else:
            print(f"Unknown command '/show {args[1]}'. Type /? for help")

    def _load(self, args: list[str]) -> None:
        if len(args) != 2:
            print("Usage:\n  /load <modelname>")
            return
        self.info = ensure_model(self.client, args[1])
        self.model = args[1]
        if self.think_auto:
            self.think = infer_think(None, self.info.get("capabilities") or [])
        self.messages.clear()
        self.system = None
        print(f"Loading model '{self.model}'")
        self._preload()

    def _save(self, args: list[str]) -> None:
        if len(args) != 2:
            print("Usage:\n  /save <modelname>")
            return
        body: dict[str, Any] = {"model": args[1], "from": self.model, "messages": self.messages,
                                "stream": False}
        if self.options:
            body["parameters"] = self.options
        if self.system is not None:
            body["system"] = self.system
        self.client.request("POST", "/api/create", body)
        print(f"Created new model '{args[1]}'")


def _placeholder() -> Any:
    from prompt_toolkit.formatted_text import HTML

    return HTML("<style fg='#888888'>Send a message (/? for help)</style>")
