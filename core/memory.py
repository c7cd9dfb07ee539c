"""Memory the scheduler plans with: the host's RAM, what a model may take on each device, the default
context length by memory (Ollama's tiers), and whether a model fits beside the loaded ones."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from corral.config import Config
from corral.types import HOST, DeviceInfo, DeviceMemory, LoadOptions, MemoryEstimate

GiB = 1 << 30
# compat(ollama): the default num_ctx by total GPU memory (server/routes.go, since 2026-01), with its
# thresholds one GiB under the round numbers "to account for small differences in the exact value".
CONTEXT_TIERS = ((47 * GiB, 262144), (23 * GiB, 32768), (0, 4096))
MIN_DEFAULT_CONTEXT = 4096  # the smallest default the memory fit steps down to (llama.cpp's --fit-ctx)
OFFLOAD_TYPES = ("gpu", "igpu", "rpc")  # devices whose memory counts as "VRAM" (size_vram, the tiers)


def host_memory() -> tuple[int, int]:
    """(available, total) bytes of RAM: Linux's MemAvailable (page cache the kernel can drop counts as
    available); elsewhere the total for both, as ggml itself assumes."""
    try:
        fields = {}
        with open("/proc/meminfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, rest = line.partition(":")
                fields[key] = int(rest.split()[0]) * 1024
        total = fields.get("MemTotal", 0)
        return fields.get("MemAvailable", fields.get("MemFree", total)), total
    except (OSError, ValueError, IndexError):
        pass
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 0
    return total, total


def fmt(n: int) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / (1 << 20):.0f} MiB"


def default_context(devices: Iterable[DeviceInfo], config: Config) -> int:
    """Ollama's default context length for this machine: 262144 from 47 GiB of GPU memory (less
    CORRAL_GPU_OVERHEAD per GPU), 32768 from 23 GiB, else 4096. A machine without GPUs has its RAM
    as the device memory (Ollama would say 4096 there; agents need more, and RAM is what holds it)."""
    offload = [d for d in devices if d.type in OFFLOAD_TYPES]
    if offload:
        memory = sum(max(0, d.memory_total - config.gpu_overhead) for d in offload)
    else:
        memory = host_memory()[1]
    return next(n for floor, n in CONTEXT_TIERS if memory >= floor)


@dataclass
class Held:
    """What one loaded model holds on each device (its measured usage), for the planner."""

    name: str
    devices: dict[str, int]  # device name -> bytes
    idle: bool
    last_used: float


@dataclass
class Fit:
    """The planner's answer for one load: the devices where it falls short (bytes missing) now, and
    what the model may take on each device if it loads."""

    short: dict[str, int] = field(default_factory=dict)
    limits: dict[str, int] = field(default_factory=dict)
    never: str = ""  # why it cannot fit even with every other model unloaded ("" if it can)

    @property
    def fits(self) -> bool:
        return not self.short and not self.never


def _room(d: DeviceMemory, config: Config, held: int, freed: int, host_free: int) -> tuple[int, int]:
    """(what a new model may take on device ``d`` now, what it could take with nothing of ours loaded)."""
    if d.device == HOST:
        free = host_free  # measured now: our runners' RAM is already subtracted
    else:
        free = d.free + freed  # as measured with the estimate, plus what was unloaded since
        if d.type in ("gpu", "igpu"):
            free -= config.gpu_overhead
    now, alone = free, free + held
    if config.memory_limit:
        now, alone = min(now, config.memory_limit - held), min(alone, config.memory_limit)
    return max(0, now), max(0, alone)


def plan(estimate: MemoryEstimate, loaded: Iterable[Held], options: LoadOptions, config: Config,
         freed: Mapping[str, int] | None = None) -> Fit:
    """Whether a model whose estimate is ``estimate`` fits beside the ``loaded`` ones.

    A device falls short when the model needs more there than it may take now. With ``num_gpu`` -1 a
    GPU or RPC device that falls short is not final: layers can stay on the host (the backend's fit
    decides how many), as long as everything fits the host and the devices together.
    """
    host_free = host_memory()[0]
    loaded = list(loaded)
    fit = Fit()
    spill = 0  # bytes that would move to the host if short offload devices keep fewer layers
    for d in estimate.devices:
        held = sum(m.devices.get(d.device, 0) for m in loaded)
        now, alone = _room(d, config, held, (freed or {}).get(d.device, 0), host_free)
        fit.limits[d.device] = now
        flexible = d.device != HOST and options.num_gpu == -1 and not options.tensor_split
        if d.used > alone:
            if not flexible:
                # compat(ollama): its wording ("model requires more system memory (X) than is
                # available (Y)"), which clients and people search for, then what makes up X.
                where = "system memory" if d.device == HOST else f"memory on {d.device}"
                fit.never = (f"model requires more {where} ({fmt(d.used)}: {fmt(d.weights)} weights, "
                             f"{fmt(d.kv_cache)} KV cache for num_ctx {options.num_ctx} x "
                             f"{options.num_parallel} sequences, {fmt(d.compute)} compute) than is "
                             f"available ({fmt(alone)}" + _why(d, config))
                return fit
            spill += d.used - alone
        elif d.used > now:
            fit.short[d.device] = d.used - now
    if spill:
        host = next((d for d in estimate.devices if d.device == HOST), None)
        if host is not None:
            held = sum(m.devices.get(HOST, 0) for m in loaded)
            _now, alone = _room(host, config, held, 0, host_free)
            if host.used + spill > alone:
                fit.never = (f"model requires more system memory ({fmt(host.used + spill)}: the layers "
                             f"its devices cannot hold stay on the host) than is available ({fmt(alone)}"
                             + _why(host, config))
    return fit


def _why(d: DeviceMemory, config: Config) -> str:
    """The end of a refusal: what bounds the available memory (closing its parenthesis), and a remedy."""
    if config.memory_limit:
        return f" with CORRAL_MEMORY_LIMIT={fmt(config.memory_limit)}); lower num_ctx or raise the limit"
    if d.device == HOST:
        return f" of {fmt(d.total)} RAM); lower num_ctx or use a smaller quantization"
    return (f" of {fmt(d.total)}, CORRAL_GPU_OVERHEAD {fmt(config.gpu_overhead)}); lower num_ctx or "
            "let layers stay on the host (num_gpu unset)")


def scaled(estimate: MemoryEstimate, old_ctx: int, new_ctx: int) -> MemoryEstimate:
    """``estimate`` with its KV cache scaled from ``old_ctx`` to ``new_ctx`` per sequence (the cache is
    linear in the context; weights and compute buffers are taken as they were)."""
    devices = tuple(DeviceMemory(device=d.device, type=d.type, weights=d.weights,
                                 kv_cache=d.kv_cache * new_ctx // max(1, old_ctx), compute=d.compute,
                                 free=d.free, total=d.total) for d in estimate.devices)
    return MemoryEstimate(devices=devices, n_layer=estimate.n_layer)
