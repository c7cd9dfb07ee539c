"""Hardware probe of the cuda backend: a built folder, an NVIDIA driver and at least one GPU."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from corral.config import Config
from corral.types import DeviceInfo
from corral_plugins._llama.backend import Probe
from corral_plugins._llama.cpuvariant import choose_variant
from corral_plugins.cpu.probe import not_built

DRIVER_DIR = Path("/proc/driver/nvidia")
TIMEOUT = 15.0

# Run in a child: initialising the driver can hang or crash, and the probe must do neither.
_CUDA_QUERY = r"""
import ctypes, sys
try:
    cuda = ctypes.CDLL("libcuda.so.1")
except OSError as exc:
    print("ERR cannot load libcuda.so.1:", exc); sys.exit(0)
rc = cuda.cuInit(0)
if rc != 0:
    print("ERR cuInit failed with code", rc); sys.exit(0)
n = ctypes.c_int(0)
cuda.cuDeviceGetCount(ctypes.byref(n))
for i in range(n.value):
    dev = ctypes.c_int(0); cuda.cuDeviceGet(ctypes.byref(dev), i)
    name = ctypes.create_string_buffer(256); cuda.cuDeviceGetName(name, 256, dev)
    total = ctypes.c_size_t(0); cuda.cuDeviceTotalMem_v2(ctypes.byref(total), dev)
    print("GPU", total.value, name.value.decode(errors="replace"))
"""


def query_gpus() -> tuple[list[DeviceInfo], str]:
    """(GPUs, problem): nvidia-smi if present, else the driver library in a child process."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name,memory.total,memory.free",
                                  "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            return [], f"nvidia-smi did not answer within {TIMEOUT:.0f} s"
        if out.returncode != 0:
            return [], f"nvidia-smi failed: {(out.stderr or out.stdout).strip()[:200]}"
        gpus = []
        for i, line in enumerate(out.stdout.strip().splitlines()):
            parts = [p.strip() for p in line.rsplit(",", 2)]
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                gpus.append(DeviceInfo(name=f"CUDA{i}", description=parts[0], type="gpu",
                                       memory_total=int(parts[1]) << 20, memory_free=int(parts[2]) << 20))
        return gpus, "" if gpus else "the NVIDIA driver reports no GPU"
    try:
        out = subprocess.run([sys.executable, "-c", _CUDA_QUERY], capture_output=True, text=True,
                             timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return [], f"the CUDA driver did not answer within {TIMEOUT:.0f} s"
    if out.returncode != 0:
        return [], f"the CUDA driver check crashed (exit {out.returncode})"
    gpus = []
    for i, line in enumerate(out.stdout.splitlines()):
        if line.startswith("ERR"):
            return [], line[4:]
        if line.startswith("GPU "):
            _, total, name = line.split(" ", 2)
            gpus.append(DeviceInfo(name=f"CUDA{i}", description=name, type="gpu",
                                   memory_total=int(total), memory_free=int(total)))
    return gpus, "" if gpus else "the NVIDIA driver reports no GPU"


def probe_cuda(lib_dir: Path, config: Config) -> Probe:
    if not sys.platform.startswith("linux") and not sys.platform.startswith("win"):
        return Probe(False, f"CUDA is not available on {sys.platform}")
    # The machine's lack comes first: a build alone would not make this backend usable.
    no_driver = sys.platform.startswith("linux") and not DRIVER_DIR.exists()
    driver_note = f"no NVIDIA driver found ({DRIVER_DIR} missing)"
    why = not_built("cuda", lib_dir)
    if why:
        return Probe(False, f"{driver_note}; also {why}" if no_driver else why)
    modules = sorted(lib_dir.glob("libggml-cuda.*"))
    if not modules:
        return Probe(False, f"no libggml-cuda in {lib_dir}: run build_backends.py --backend cuda")
    if no_driver:
        return Probe(False, driver_note)
    gpus, problem = query_gpus()
    if not gpus:
        return Probe(False, problem)
    # llama.cpp always needs a CPU backend too; the cuda folder carries its own CPU variants.
    choice = choose_variant(lib_dir, config.cpu_variant)
    names = ", ".join(g.description for g in gpus)
    return Probe(True, f"{len(gpus)} NVIDIA GPU(s): {names}; CPU variant {choice.name}",
                 [modules[0], choice.path], gpus)
