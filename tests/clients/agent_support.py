"""Claude Code and Codex for the agent tests: installed by npm into a cache outside the clone, and a
recording proxy that logs every request they make to corral (method, path, headers, body summary,
the answer's status and SSE event types)."""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

# The versions whose traffic agent-clients.md records; pinned so a new release cannot change the test.
AGENTS = {"claude": "@anthropic-ai/claude-code@2.1.197", "codex": "@openai/codex@0.171.0"}
NPM_TIMEOUT = 900


def agents_dir() -> Path:
    """Where the agents are installed: ~/.cache/corral/agents/<versions>, outside the clone."""
    versions = "-".join(v.rsplit("@", 1)[1] for v in AGENTS.values())
    return Path.home() / ".cache" / "corral" / "agents" / versions


def install_agents() -> dict[str, Path] | str:
    """Paths of the ``claude`` and ``codex`` executables (installing them once), or why they cannot be had."""
    npm = shutil.which("npm")
    if npm is None:
        return "npm is not installed: the Claude Code and Codex tests need it (apt-get install npm)"
    prefix = agents_dir()
    bins = {name: prefix / "node_modules" / ".bin" / name for name in AGENTS}
    if all(p.exists() for p in bins.values()):
        return bins
    prefix.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--no-save", *AGENTS.values()],
        capture_output=True,
        text=True,
        timeout=NPM_TIMEOUT,
    )
    if proc.returncode != 0 or not all(p.exists() for p in bins.values()):
        raise RuntimeError(f"npm install of {', '.join(AGENTS.values())} failed:\n{proc.stderr[-3000:]}")
    return bins


# ---- recording proxy ---------------------------------------------------------------------------------
_HOP = {"host", "content-length", "transfer-encoding", "connection", "accept-encoding"}
_SHOWN = (
    "authorization",
    "x-api-key",
    "anthropic-version",
    "anthropic-beta",
    "accept",
    "user-agent",
    "originator",
    "content-type",
)


def summarize(body: bytes) -> dict[str, Any]:
    """The request body's shape: top-level keys and the sizes that matter (not the 40-80 KB of text)."""
    try:
        data = json.loads(body) if body else {}
    except ValueError:
        return {"bytes": len(body)}
    if not isinstance(data, dict):
        return {"bytes": len(body)}
    out: dict[str, Any] = {"bytes": len(body), "keys": sorted(data)}
    for key in (
        "model",
        "stream",
        "max_tokens",
        "store",
        "tool_choice",
        "parallel_tool_calls",
        "reasoning",
        "thinking",
        "include",
    ):
        if key in data:
            out[key] = data[key]
    if isinstance(data.get("tools"), list):
        out["tools"] = [t.get("name") or t.get("type") for t in data["tools"] if isinstance(t, dict)]
    for key in ("messages", "input"):
        if isinstance(data.get(key), list):
            out[key] = [m.get("role") or m.get("type") for m in data[key] if isinstance(m, dict)]
    if isinstance(data.get("system"), list):
        out["system_blocks"] = len(data["system"])
    return out


class RecordingProxy:
    """An HTTP proxy in front of ``target`` that forwards everything and keeps a record per request."""

    def __init__(self, target: str, keep_bodies: Path | None = None) -> None:
        self.target = target.rstrip("/")
        self.keep_bodies = keep_bodies  # where each request body is written whole (request-N.json)
        self.records: list[dict[str, Any]] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                record: dict[str, Any] = {
                    "method": self.command,
                    "path": self.path,
                    "headers": {
                        k.lower(): (v if k.lower() not in ("authorization", "x-api-key") else "<set>")
                        for k, v in self.headers.items()
                        if k.lower() in _SHOWN
                    },
                    "body": summarize(body),
                }
                proxy.records.append(record)
                if proxy.keep_bodies is not None:
                    (proxy.keep_bodies / f"request-{len(proxy.records)}.json").write_bytes(body)
                events: list[str] = []
                stream = b""  # the answer as read, for the last SSE event's data
                try:
                    with (
                        httpx.Client(timeout=600) as client,
                        client.stream(
                            self.command, proxy.target + self.path, content=body, headers=headers
                        ) as r,
                    ):
                        record["status"] = r.status_code
                        self.send_response(r.status_code)
                        for k, v in r.headers.items():
                            if k.lower() not in _HOP and k.lower() != "content-encoding":
                                self.send_header(k, v)
                        self.send_header("transfer-encoding", "chunked")
                        self.end_headers()
                        for chunk in r.iter_raw():
                            events += [
                                line[7:].strip()
                                for line in chunk.decode("utf-8", "replace").splitlines()
                                if line.startswith("event: ")
                            ]
                            stream = (stream + chunk)[-_KEPT:]
                            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                            self.wfile.flush()
                        self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    record["client_hung_up"] = True  # Codex closes right after response.completed
                record["events"] = _collapse(events)
                last = _last_data(stream)
                if last is not None:
                    record["last"] = last

            do_GET = do_POST = do_HEAD = do_DELETE = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> RecordingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


_KEPT = 1 << 20  # enough for the last event of a long answer


def _last_data(stream: bytes) -> dict[str, Any] | None:
    """The last SSE event's type, and the status, stop details and usage of the object it carries."""
    lines = stream.decode("utf-8", "replace").splitlines()
    datas = [ln[5:].strip() for ln in lines if ln.startswith("data:")]
    try:
        data = json.loads(datas[-1]) if datas else None
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    inner = data.get("response") or data.get("delta") or {}
    out: dict[str, Any] = {"type": data.get("type")}
    for key in ("status", "incomplete_details", "stop_reason", "usage"):
        if isinstance(inner, dict) and key in inner:
            out[key] = inner[key]
    return out


def _collapse(events: list[str]) -> list[str]:
    """Event types with runs folded: ``content_block_delta x12``."""
    out: list[str] = []
    for name, count in _runs(events):
        out.append(name if count == 1 else f"{name} x{count}")
    return out


def _runs(items: list[str]) -> Iterator[tuple[str, int]]:
    i = 0
    while i < len(items):
        j = i
        while j < len(items) and items[j] == items[i]:
            j += 1
        yield items[i], j - i
        i = j
