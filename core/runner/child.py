"""The runner process: one backend, one model, requests served over a private socket."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

import msgspec

from corral.config import Config
from corral.errors import BackendError, CorralError
from corral.plugins import load_plugins
from corral.runner import protocol as p
from corral.runner.base import model_file
from corral.selection import BackendHooks, select_backend
from corral.types import CancelToken, GenerationStats, ModelHandle, TokenEvent

log = logging.getLogger("corral.runner.child")


class _Writer:
    """The socket's sending side: each frame goes out from the thread that made it, one at a time.

    No writer thread: on a machine whose cores all run llama.cpp's compute threads, waking one more
    thread per token preempts a compute thread mid-decode (bench/runner_ipc.py --gemma: the
    subprocess ran at 0.96x in-process with a writer thread, 1.00x without).
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()
        self._closed = False

    def send(self, msg: msgspec.Struct) -> None:
        data = p.encode(msg)
        with self._lock:
            if self._closed:
                return
            try:
                self._sock.sendall(data)
            except OSError:
                # The server is gone: nobody can use our results, and the native threads may be busy.
                log.warning("server connection lost; runner exiting")
                os._exit(0)

    def close(self) -> None:
        with self._lock:
            self._closed = True


class RunnerChild:
    """Reads requests from the socket and answers each on its own thread (the backend batches them)."""

    def __init__(self, sock: socket.socket, config: Config, backend: str | None) -> None:
        self.sock = sock
        self.config = config
        self.requested = backend
        self.writer = _Writer(sock)
        self._hooks: BackendHooks | None = None
        self.handle: ModelHandle | None = None
        self.cancels: dict[int, CancelToken] = {}
        self.threads: set[threading.Thread] = set()
        self.lock = threading.Lock()

    @property
    def hooks(self) -> BackendHooks:
        """The selected backend's per-model hooks (``setup`` has selected it)."""
        if self._hooks is None:
            raise BackendError("this runner has no backend selected")
        return self._hooks

    # ---- setup ----------------------------------------------------------------------------------
    def setup(self) -> bool:
        try:
            host = load_plugins(self.config)
            # the server chose the backend (and passed it here): only that one is probed
            name, infos = select_backend(host, self.config, self.requested, probe_all=False)
            devices = next((list(i.devices) for i in infos if i.name == name), [])
            self._hooks = BackendHooks(host, name)
        except Exception as exc:
            kind = type(exc).__name__ if isinstance(exc, CorralError) else "BackendError"
            self.writer.send(p.Ready(pid=os.getpid(), error=str(exc), error_kind=kind))
            return False
        self.writer.send(p.Ready(pid=os.getpid(), backend=name, devices=devices))
        return True

    # ---- main loop ------------------------------------------------------------------------------
    def serve(self) -> int:
        if not self.setup():
            self.writer.close()
            return 1
        while True:
            body = self._read_frame()
            if body is None:
                break
            try:
                msg = p.to_runner_decoder.decode(body)
            except msgspec.DecodeError as exc:
                log.error("undecodable frame from the server: %s", exc)
                break
            if isinstance(msg, p.Cancel):
                token = self.cancels.get(msg.target)
                if token is not None:
                    token.cancel()
                continue
            t = threading.Thread(target=self._handle, args=(msg,), name=f"runner-{type(msg).__name__}",
                                 daemon=True)
            with self.lock:
                self.threads.add(t)
            t.start()
        self._shutdown()
        return 0

    def _read_frame(self) -> bytes | None:
        header = self._recv_exact(p.HEADER.size)
        if header is None:
            return None
        try:
            n = p.frame_length(header)
        except ValueError as exc:
            log.error("%s", exc)
            return None
        return self._recv_exact(n)

    def _recv_exact(self, n: int) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = self.sock.recv(min(n - len(buf), 1 << 20))
            except OSError:
                return None
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)

    def _shutdown(self) -> None:
        """The server closed the channel: stop generations, free the model, exit."""
        for token in list(self.cancels.values()):
            token.cancel()
        with self.lock:
            threads = list(self.threads)
        for t in threads:
            t.join(5)
        if self.handle is not None and self._hooks is not None:
            try:
                self._hooks.unload(self.handle)
            except Exception:
                log.exception("unload at shutdown failed")
            self.handle = None
        self.writer.close()

    # ---- requests -------------------------------------------------------------------------------
    def _handle(self, msg: p.Request) -> None:
        try:
            if isinstance(msg, p.Generate):
                self._generate(msg)
            else:
                self.writer.send(p.Result(id=msg.id, value=self._call(msg)))
        except BaseException as exc:  # every failure goes back to the one request that caused it
            if not isinstance(exc, CorralError):
                log.exception("runner request %s failed", type(msg).__name__)
            self.writer.send(p.failure_of(msg.id, exc))
        finally:
            with self.lock:
                self.threads.discard(threading.current_thread())

    def _loaded(self) -> ModelHandle:
        if self.handle is None:
            raise BackendError("no model is loaded in this runner")
        return self.handle

    def _call(self, msg: p.Request) -> Any:
        if isinstance(msg, p.Load):
            if self.handle is not None:
                raise BackendError("this runner already has a model loaded")
            self.handle = self.hooks.load_model(model_file(msg.model), msg.options,
                                                progress=self._progress_sender(msg.id),
                                                memory_limits=msg.memory_limits)
            return self.handle
        if isinstance(msg, p.Estimate):
            return self.hooks.estimate_memory(model_file(msg.model), msg.options)
        if isinstance(msg, p.Tokenize):
            return self.hooks.tokenize(self._loaded(), msg.text, add_special=msg.add_special,
                                       parse_special=msg.parse_special)
        if isinstance(msg, p.Detokenize):
            return self.hooks.detokenize(self._loaded(), msg.tokens, render_special=msg.render_special)
        if isinstance(msg, p.Pieces):
            return self.hooks.token_pieces(self._loaded(), msg.tokens)
        if isinstance(msg, p.Embed):
            token = self.cancels[msg.id] = CancelToken()
            try:
                return self.hooks.embed(self._loaded(), msg.inputs, normalize=msg.normalize, cancel=token)
            finally:
                self.cancels.pop(msg.id, None)
        if isinstance(msg, p.Rerank):
            return self.hooks.rerank(self._loaded(), msg.query, msg.documents)
        if isinstance(msg, p.Quantize):
            self.hooks.quantize(msg.source, msg.destination, msg.file_type)
            return True
        if isinstance(msg, p.Unload):
            handle, self.handle = self.handle, None
            if handle is not None:
                self.hooks.unload(handle)
            return True
        raise BackendError(f"unknown runner request {type(msg).__name__}")

    def _progress_sender(self, request_id: int) -> Callable[[float], bool]:
        """The backend's load-progress callback for one load: a frame per whole percent, never more
        (llama.cpp reports every tensor). It never cancels the load: closing the runner does."""
        sent = -1

        def progress(fraction: float) -> bool:
            nonlocal sent
            percent = int(max(0.0, min(1.0, fraction)) * 100)
            if percent > sent:
                sent = percent
                self.writer.send(p.LoadProgress(id=request_id, fraction=percent / 100))
            return True

        return progress

    def _generate(self, msg: p.Generate) -> None:
        token = CancelToken()
        self.cancels[msg.id] = token
        finished = False
        try:
            for event in self.hooks.generate(self._loaded(), msg.request, token):
                self.writer.send(p.Events(id=msg.id, events=[event]))
                if event.finish_reason is not None:
                    finished = True
                    break
            if not finished:
                # A backend that ends without a final event still owes the client an end of stream.
                log.warning("backend %s ended a generation without a finish_reason", self.hooks.backend)
                stats = GenerationStats(prompt_tokens=len(msg.request.prompt))
                self.writer.send(p.Events(id=msg.id, events=[TokenEvent(token=-1, finish_reason="stop",
                                                                         stats=stats)]))
        finally:
            self.cancels.pop(msg.id, None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m corral.runner", description=__doc__)
    parser.add_argument("--fd", type=int, required=True, help="inherited socket to the server")
    parser.add_argument("--backend", default=None, help="backend plugin to use (default: select)")
    args = parser.parse_args(argv)
    # The server decides when runners stop; a Ctrl-C in its terminal reaches us too and must not
    # kill in-flight requests before the server has drained them.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        config = Config.from_env()
    except ValueError as exc:
        print(f"corral runner: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.DEBUG if config.debug else logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s runner[{os.getpid()}] %(levelname)s %(name)s: %(message)s",
    )
    if not config.debug:  # llama.cpp's per-load INFO chatter is detail: CORRAL_DEBUG=1 shows it
        logging.getLogger("corral.llama").setLevel(logging.WARNING)
    sock = socket.socket(fileno=args.fd)
    code = RunnerChild(sock, config, args.backend).serve()
    logging.shutdown()
    # Native threads (a backend's decode loop) may still be winding down; they hold nothing we need.
    os._exit(code)
