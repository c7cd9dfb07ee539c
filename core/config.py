"""Every CORRAL_* setting in one table: name, default, meaning, and how it is parsed."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import msgspec

from corral.media import MediaLimits

DEFAULT_PORT = 11434
KV_CACHE_TYPES = ("f16", "q8_0", "q4_0")


class Setting(msgspec.Struct, frozen=True):
    """One environment variable: its name, its default (as text) and what it does."""

    env: str
    default: str
    help: str


SETTINGS: tuple[Setting, ...] = (
    Setting("CORRAL_HOST", "127.0.0.1:11434", "Address the server binds and clients talk to"),
    Setting("CORRAL_MODELS", "~/.corral/models", "Model store (an Ollama store works unchanged)"),
    Setting("CORRAL_KEEP_ALIVE", "5m", "How long an idle model stays loaded (duration or seconds)"),
    Setting("CORRAL_NUM_PARALLEL", "4", "Sequences each loaded model decodes together"),
    Setting("CORRAL_MAX_LOADED_MODELS", "3", "Models loaded at once; least recently used goes"),
    Setting("CORRAL_MAX_QUEUE", "512", "Requests waiting for a slot before the server answers 503"),
    Setting("CORRAL_CONTEXT_LENGTH", "", "Default context length per sequence (num_ctx); unset: by memory, "
            "as Ollama: 4096, 32768 or 262144 (see docs/memory.md)"),
    Setting("CORRAL_MEMORY_LIMIT", "", "Most memory loaded models may take on each device, RAM included "
            "(e.g. 8GiB); unset: what each device has free"),
    Setting("CORRAL_GPU_OVERHEAD", "0", "Bytes of each GPU's memory kept free for other programs"),
    Setting("CORRAL_LOAD_TIMEOUT", "5m", "A model load making no progress this long fails (<=0: never)"),
    Setting("CORRAL_FLASH_ATTENTION", "", "1 or 0 to force flash attention on or off (auto)"),
    Setting("CORRAL_KV_CACHE_TYPE", "f16", "KV cache type: f16, q8_0 or q4_0"),
    Setting("CORRAL_SPECULATIVE", "1", "0 turns off n-gram (prompt-lookup) speculative decoding"),
    Setting("CORRAL_BACKEND", "", "Backend to use, bypassing hardware detection"),
    Setting("CORRAL_WORKERS", "", "RPC workers (corral worker) to split models across, host:port,..."),
    Setting("CORRAL_CPU_VARIANT", "", "CPU backend variant to use (e.g. zen4, haswell), skipping detection"),
    Setting("CORRAL_ORIGINS", "", "Extra allowed CORS origins, comma separated"),
    Setting("CORRAL_API_KEY", "", "If set, every route requires 'Authorization: Bearer <key>'"),
    Setting("CORRAL_MAX_BODY", "128MiB", "Largest JSON request body accepted"),
    Setting("CORRAL_MAX_MEDIA_SIZE", "16MiB", "Largest image or audio file in a request"),
    Setting("CORRAL_MAX_IMAGE_PIXELS", "33554432", "Most pixels (width x height) of one image"),
    Setting("CORRAL_MAX_MEDIA", "32", "Most images and audio clips in one request"),
    Setting("CORRAL_FETCH_IMAGES", "", "1 to let OpenAI image_url parts fetch http(s) URLs (else data URIs)"),
    Setting("CORRAL_NOPRUNE", "", "Set to keep unreferenced blobs (no garbage collection)"),
    Setting("CORRAL_NOREPACK", "", "Set to keep CPU weights in the file's layout (llama.cpp's --no-repack)"),
    Setting("CORRAL_DEBUG", "", "1 for debug logs and tracebacks"),
    Setting("CORRAL_LOAD_PLUGINS", "", "Plugins to load, comma separated (unset: all; empty: none)"),
    Setting("CORRAL_DISABLE_PLUGINS", "", "Comma-separated plugin names to block"),
    Setting("CORRAL_EXTRA_PLUGINS", "", "Comma-separated module paths registered as plugins"),
    Setting("CORRAL_TRACE_PLUGINS", "", "1 to log every hook call"),
    Setting("CORRAL_NOHISTORY", "", "Set to keep no REPL history"),
    Setting("CORRAL_HOME", "~/.corral", "Where history, logs and the server pid live"),
    Setting("CORRAL_REGISTRY_MIRROR", "", "URL that pulls of registry.ollama.ai models use instead"),
)
# The test kit's own variable: not a server setting, so not part of Config (read by fake_script()).
FAKE_SCRIPT = Setting("CORRAL_FAKE_SCRIPT", "", "Test kit: JSON rules file scripting the fake backend")


def fake_script(env: Mapping[str, str] | None = None) -> str | None:
    """The rules file that scripts ``corral.testing.fake`` (``CORRAL_FAKE_SCRIPT``), or None."""
    value = (os.environ if env is None else env).get(FAKE_SCRIPT.env, "").strip()
    return value or None


def parse_bool(value: str | None) -> bool:
    """Ollama's rule: empty is false, a parseable bool is itself, anything else non-empty is true."""
    if value is None:
        return False
    v = value.strip().strip("'\"").lower()
    if v in ("", "0", "false", "f", "no", "off"):
        return False
    return True


MAX_DURATION_S = (2**63 - 1) / 1e9  # Go's time.Duration limit
_DURATION_RE = re.compile(r"(-?\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str | int | float) -> float:
    """Seconds from a Go duration string ("5m", "1h30m", "-1m") or a number of seconds.

    A bare numeric *string* is rejected with "missing unit in duration", as Ollama does for
    ``keep_alive``; numbers are seconds. Negative, or more than Go's longest duration (~292 years),
    means forever (returned as ``float('inf')``).
    """
    if isinstance(value, bool):
        raise ValueError("invalid duration")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip()
        if not text:
            raise ValueError("invalid duration")
        if re.fullmatch(r"-?\d+(\.\d+)?", text):
            raise ValueError(f'time: missing unit in duration "{text}"')
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        pos, seconds = 0, 0.0
        for m in _DURATION_RE.finditer(body):
            if m.start() != pos:
                raise ValueError(f'time: invalid duration "{text}"')
            seconds += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
            pos = m.end()
        if pos != len(body):
            raise ValueError(f'time: invalid duration "{text}"')
        seconds *= sign
    if seconds != seconds:  # NaN
        raise ValueError("invalid duration")
    # Negative means forever (Ollama's rule); so does anything past the longest duration Go can hold
    # (~292 years), which no timer or timestamp downstream could represent.
    return float("inf") if seconds < 0 or seconds > MAX_DURATION_S else seconds


def parse_size(text: str) -> int:
    """Bytes from "128MiB", "1GB", "4096"."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]i?B?|B)?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"invalid size {text!r}")
    n, unit = int(m.group(1)), (m.group(2) or "B").upper()
    scale = {"B": 1, "K": 1e3, "KB": 1e3, "KIB": 1024, "M": 1e6, "MB": 1e6, "MIB": 1024**2,
             "G": 1e9, "GB": 1e9, "GIB": 1024**3, "T": 1e12, "TB": 1e12, "TIB": 1024**4}[unit]
    return int(n * scale)


def parse_host(value: str) -> tuple[str, str, int]:
    """(scheme, host, port) from Ollama-style ``[scheme://]host[:port]``; ":8080" means all hosts."""
    v = value.strip().strip("'\"") or "127.0.0.1:11434"
    scheme, explicit = "http", "://" in v
    if explicit:
        scheme, v = v.split("://", 1)
    v = v.split("/", 1)[0]
    # compat(ollama): the port defaults to 11434, or to the scheme's port when a scheme is given.
    default_port = {"http": 80, "https": 443}.get(scheme, DEFAULT_PORT) if explicit else DEFAULT_PORT
    host, port = v, default_port
    if v.startswith("["):  # [::1]:11434
        end = v.find("]")
        host, rest = v[1:end], v[end + 1 :]
        if rest.startswith(":"):
            port = int(rest[1:])
    elif v.count(":") == 1:
        host, p = v.split(":")
        port = int(p) if p else default_port
    host = host or "0.0.0.0"
    return scheme, host, port


MAX_WORKERS = 16  # llama.cpp's RPC backend takes at most 16 servers (GGML_RPC_MAX_SERVERS)
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})")


def parse_workers(text: str) -> tuple[str, ...]:
    """RPC worker endpoints from ``host:port,host:port``, each checked and in a canonical form.

    llama.cpp's RPC client connects over IPv4 by name or address (``gethostbyname``): an IPv6
    literal cannot be reached, so it is refused here rather than failing later.
    """
    out: list[str] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        host, sep, port_text = item.rpartition(":")
        if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"worker {item!r} must be host:port (e.g. 10.0.0.5:50052)")
        if ":" in host or "[" in host or not _HOSTNAME_RE.fullmatch(host):
            raise ValueError(f"worker {item!r}: the host must be an IPv4 address or a host name")
        endpoint = f"{host.lower()}:{int(port_text)}"
        if endpoint in out:
            raise ValueError(f"worker {endpoint} is listed twice")
        out.append(endpoint)
    if len(out) > MAX_WORKERS:
        raise ValueError(f"at most {MAX_WORKERS} workers, not {len(out)}")
    return tuple(out)


def parse_mirror(value: str) -> str | None:
    """A registry mirror's base URL (``https://host[:port][/prefix]``, no trailing slash), or None."""
    v = value.strip().rstrip("/")
    if not v:
        return None
    scheme, sep, rest = v.partition("://")
    if not sep or scheme.lower() not in ("http", "https") or not rest or rest.startswith("/"):
        raise ValueError(f"CORRAL_REGISTRY_MIRROR must be an http(s)://host[:port][/path] URL, not {value!r}")
    return f"{scheme.lower()}://{rest}"


class Config(msgspec.Struct, kw_only=True):
    """Resolved settings. Build with ``Config.from_env()``; tests pass their own values."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    scheme: str = "http"
    models: Path = Path("~/.corral/models").expanduser()
    home: Path = Path("~/.corral").expanduser()
    keep_alive: float = 300.0
    num_parallel: int = 4
    max_loaded_models: int = 3
    max_queue: int = 512
    context_length: int | None = None  # CORRAL_CONTEXT_LENGTH; None: chosen by memory (corral.memory)
    memory_limit: int = 0  # CORRAL_MEMORY_LIMIT: bytes per device loaded models may take; 0 = no limit
    gpu_overhead: int = 0  # CORRAL_GPU_OVERHEAD: bytes of each GPU kept free
    load_timeout: float = 300.0  # CORRAL_LOAD_TIMEOUT: seconds without load progress; inf = never
    flash_attention: bool | None = None
    kv_cache_type: str = "f16"
    speculative: bool = True
    backend: str | None = None
    cpu_variant: str | None = None  # CORRAL_CPU_VARIANT: a libggml-cpu-<name> to force
    workers: tuple[str, ...] = ()  # CORRAL_WORKERS: host:port of each RPC worker, in split order
    origins: tuple[str, ...] = ()
    api_key: str | None = None
    max_body: int = 128 * 1024 * 1024
    max_media_size: int = 16 * 1024 * 1024
    max_image_pixels: int = 32 * 1024 * 1024
    max_media: int = 32
    fetch_images: bool = False
    noprune: bool = False
    norepack: bool = False  # CORRAL_NOREPACK: no repacked CPU weights (the kernels RPC workers run)
    debug: bool = False
    load_plugins: tuple[str, ...] | None = None  # None = all entry points
    disable_plugins: tuple[str, ...] = ()
    extra_plugins: tuple[str, ...] = ()
    trace_plugins: bool = False
    nohistory: bool = False
    registry_mirror: str | None = None  # CORRAL_REGISTRY_MIRROR: scheme://host[:port][/prefix]

    def __post_init__(self) -> None:
        """A setting no request could ever use is refused here, when the server starts."""
        if self.kv_cache_type not in KV_CACHE_TYPES:
            raise ValueError(f"CORRAL_KV_CACHE_TYPE must be one of {', '.join(KV_CACHE_TYPES)}, "
                             f"not {self.kv_cache_type!r}")
        ctx = 1 if self.context_length is None else self.context_length  # None: chosen by memory
        for env, value in (("CORRAL_NUM_PARALLEL", self.num_parallel),
                           ("CORRAL_MAX_LOADED_MODELS", self.max_loaded_models),
                           ("CORRAL_MAX_QUEUE", self.max_queue),
                           ("CORRAL_CONTEXT_LENGTH", ctx)):
            if value < 1:
                raise ValueError(f"{env} must be at least 1, not {value}")

    @property
    def media_limits(self) -> MediaLimits:
        return MediaLimits(max_bytes=self.max_media_size, max_pixels=self.max_image_pixels,
                           max_count=self.max_media)

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        host = "[::1]" if host == "::" else (f"[{host}]" if ":" in host else host)
        return f"{self.scheme}://{host}:{self.port}"

    def to_env(self) -> dict[str, str]:
        """The CORRAL_* variables from which ``from_env`` rebuilds this config (for child processes)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        keep = "-1" if self.keep_alive == float("inf") else f"{self.keep_alive!r}s"
        env = {
            "CORRAL_HOST": f"{self.scheme}://{host}:{self.port}",
            "CORRAL_MODELS": str(self.models),
            "CORRAL_HOME": str(self.home),
            "CORRAL_KEEP_ALIVE": keep,
            "CORRAL_NUM_PARALLEL": str(self.num_parallel),
            "CORRAL_MAX_LOADED_MODELS": str(self.max_loaded_models),
            "CORRAL_MAX_QUEUE": str(self.max_queue),
            "CORRAL_CONTEXT_LENGTH": "" if self.context_length is None else str(self.context_length),
            "CORRAL_MEMORY_LIMIT": str(self.memory_limit) if self.memory_limit else "",
            "CORRAL_GPU_OVERHEAD": str(self.gpu_overhead),
            "CORRAL_LOAD_TIMEOUT": "-1" if self.load_timeout == float("inf") else f"{self.load_timeout!r}s",
            "CORRAL_FLASH_ATTENTION": "" if self.flash_attention is None else str(int(self.flash_attention)),
            "CORRAL_KV_CACHE_TYPE": self.kv_cache_type,
            "CORRAL_SPECULATIVE": "1" if self.speculative else "0",
            "CORRAL_BACKEND": self.backend or "",
            "CORRAL_ORIGINS": ",".join(self.origins),
            "CORRAL_API_KEY": self.api_key or "",
            "CORRAL_MAX_BODY": str(self.max_body),
            "CORRAL_MAX_MEDIA_SIZE": str(self.max_media_size),
            "CORRAL_MAX_IMAGE_PIXELS": str(self.max_image_pixels),
            "CORRAL_MAX_MEDIA": str(self.max_media),
            "CORRAL_FETCH_IMAGES": "1" if self.fetch_images else "",
            "CORRAL_NOPRUNE": "1" if self.noprune else "",
            "CORRAL_NOREPACK": "1" if self.norepack else "",
            "CORRAL_DEBUG": "1" if self.debug else "",
            "CORRAL_DISABLE_PLUGINS": ",".join(self.disable_plugins),
            "CORRAL_EXTRA_PLUGINS": ",".join(self.extra_plugins),
            "CORRAL_TRACE_PLUGINS": "1" if self.trace_plugins else "",
            "CORRAL_NOHISTORY": "1" if self.nohistory else "",
            "CORRAL_CPU_VARIANT": self.cpu_variant or "",
            "CORRAL_WORKERS": ",".join(self.workers),
            "CORRAL_REGISTRY_MIRROR": self.registry_mirror or "",
        }
        if self.load_plugins is not None:
            env["CORRAL_LOAD_PLUGINS"] = ",".join(self.load_plugins)
        return env

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        """Read every CORRAL_* variable; a malformed value raises ValueError naming it."""
        env = os.environ if env is None else env

        def get(name: str) -> str:
            default = next(s.default for s in SETTINGS if s.env == name)
            return env.get(name, default).strip().strip("'\"")

        def names(name: str) -> tuple[str, ...]:
            return tuple(p.strip() for p in get(name).split(",") if p.strip())

        try:
            scheme, host, port = parse_host(get("CORRAL_HOST"))
            fa = get("CORRAL_FLASH_ATTENTION")
            load = env.get("CORRAL_LOAD_PLUGINS")
            return cls(
                host=host,
                port=port,
                scheme=scheme,
                models=Path(get("CORRAL_MODELS")).expanduser(),
                home=Path(get("CORRAL_HOME")).expanduser(),
                keep_alive=_keep_alive_env(get("CORRAL_KEEP_ALIVE")),
                num_parallel=int(get("CORRAL_NUM_PARALLEL")),
                max_loaded_models=int(get("CORRAL_MAX_LOADED_MODELS")),
                max_queue=int(get("CORRAL_MAX_QUEUE")),
                context_length=int(get("CORRAL_CONTEXT_LENGTH")) if get("CORRAL_CONTEXT_LENGTH") else None,
                memory_limit=_size_env("CORRAL_MEMORY_LIMIT", get("CORRAL_MEMORY_LIMIT")),
                gpu_overhead=_size_env("CORRAL_GPU_OVERHEAD", get("CORRAL_GPU_OVERHEAD")),
                load_timeout=_load_timeout_env(get("CORRAL_LOAD_TIMEOUT")),
                flash_attention=None if fa == "" else parse_bool(fa),
                kv_cache_type=get("CORRAL_KV_CACHE_TYPE") or "f16",
                speculative=parse_bool(get("CORRAL_SPECULATIVE") or "1"),
                backend=get("CORRAL_BACKEND") or None,
                cpu_variant=get("CORRAL_CPU_VARIANT") or None,
                workers=parse_workers(get("CORRAL_WORKERS")),
                origins=names("CORRAL_ORIGINS"),
                api_key=get("CORRAL_API_KEY") or None,
                max_body=parse_size(get("CORRAL_MAX_BODY")),
                max_media_size=max(1, parse_size(get("CORRAL_MAX_MEDIA_SIZE"))),
                max_image_pixels=max(1, int(get("CORRAL_MAX_IMAGE_PIXELS"))),
                max_media=max(0, int(get("CORRAL_MAX_MEDIA"))),
                fetch_images=parse_bool(get("CORRAL_FETCH_IMAGES")),
                noprune=parse_bool(get("CORRAL_NOPRUNE")),
                norepack=parse_bool(get("CORRAL_NOREPACK")),
                debug=parse_bool(get("CORRAL_DEBUG")),
                load_plugins=None if load is None else names("CORRAL_LOAD_PLUGINS"),
                disable_plugins=names("CORRAL_DISABLE_PLUGINS"),
                extra_plugins=names("CORRAL_EXTRA_PLUGINS"),
                trace_plugins=parse_bool(get("CORRAL_TRACE_PLUGINS")),
                nohistory=parse_bool(get("CORRAL_NOHISTORY")),
                registry_mirror=parse_mirror(get("CORRAL_REGISTRY_MIRROR")),
            )
        except ValueError as exc:
            raise ValueError(f"invalid environment setting: {exc}") from None


def _keep_alive_env(text: str) -> float:
    # compat(ollama): OLLAMA_KEEP_ALIVE accepts bare integer seconds, unlike the request field.
    if re.fullmatch(r"-?\d+", text):
        return parse_duration(int(text))
    return parse_duration(text)


def _size_env(name: str, text: str) -> int:
    if not text:
        return 0
    try:
        return parse_size(text)
    except ValueError:
        raise ValueError(f"{name} must be a size such as 8GiB or 512MiB, not {text!r}") from None


def _load_timeout_env(text: str) -> float:
    # compat(ollama): OLLAMA_LOAD_TIMEOUT takes a duration or integer seconds; <= 0 means no timeout.
    seconds = _keep_alive_env(text or "5m")
    return float("inf") if seconds <= 0 or seconds == float("inf") else seconds
