"""The NVIDIA GPUs this process's torch can use, learnt without initialising CUDA in this process.

A process that starts workers (cv and best on GPUs, one worker per GPU, a lone one too; tune --workers)
must leave CUDA alone: a context made here would hold memory on GPU 0 for the whole command, beside the
worker training there.
torch.cuda.is_available() and device_count() ask the driver without making one (cudaGetDeviceCount,
NVML); a GPU's name, capability and memory are read by a short child process (`python -m kit.gpus`),
once per process, unless this process has initialised CUDA already (then it asks torch itself).

    gpus = visible_gpus()        # [Gpu(index=0, name="Tesla T4", capability=(7, 5), memory_bytes=...)]
    usable_gpus()                # those this torch has kernels for (its wheel's CUDA decides: 13.0 needs 7.5+)
    cuda_problem()               # why a CUDA build of torch cannot use this machine's NVIDIA GPU, or None
    visible_gpu_names()          # what CUDA_VISIBLE_DEVICES gives a worker for each cuda:N of this process
"""
from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

# The oldest driver each CUDA major version runs on (NVIDIA's CUDA Toolkit release notes, "minor version
# compatibility"): a newer CUDA than the driver knows finds no device at all.
MIN_DRIVER = {11: 450, 12: 525, 13: 580}
OLDER_CUDA_WHEEL = "cu126"   # PyTorch's CUDA 12.6 wheels: driver 525+, capability 5.0 and newer (P100 too)
PROBE_TIMEOUT_S = 120


@dataclass(frozen=True)
class Gpu:
    index: int                      # cuda:INDEX in this process
    name: str
    capability: tuple[int, int]
    memory_bytes: int

    def describe(self) -> str:
        return (f"cuda:{self.index} {self.name} (capability {self.capability[0]}.{self.capability[1]}, "
                f"{self.memory_bytes / 2**30:.0f} GiB)")


def read_gpus() -> list[Gpu]:
    """The visible GPUs, asked of torch in this process (it initialises CUDA here)."""
    gpus = []
    for index in range(torch.cuda.device_count()):
        properties = torch.cuda.get_device_properties(index)
        gpus.append(Gpu(index, properties.name, tuple(torch.cuda.get_device_capability(index)),
                        int(properties.total_memory)))
    return gpus


def probe() -> list[Gpu]:
    """The visible GPUs, read by a child process with this one's environment (CUDA_VISIBLE_DEVICES too)."""
    kit_parent = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [kit_parent, os.environ.get("PYTHONPATH")]))}
    try:
        done = subprocess.run([sys.executable, "-m", "kit.gpus"], env=env, capture_output=True, text=True,
                              timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"reading the GPUs' properties took over {PROBE_TIMEOUT_S} s (a hung driver?)") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise RuntimeError(f"reading the GPUs' properties failed: {last}")
    return [Gpu(g["index"], g["name"], tuple(g["capability"]), g["memory_bytes"]) for g in json.loads(done.stdout)]


@functools.cache
def visible_gpus() -> tuple[Gpu, ...]:
    """The GPUs torch sees here (all of them, usable or not); read once per process."""
    if not torch.cuda.is_available():
        return ()
    return tuple(read_gpus() if torch.cuda.is_initialized() else probe())


def arch_supported(capability: tuple[int, int], arch_list: list[str] | None = None) -> bool:
    """Whether this torch has kernels for a GPU of `capability`: machine code (sm_XY) runs on the same
    major version from minor Y on; PTX (compute_XY) is compiled for any capability from XY on."""
    arch_list = torch.cuda.get_arch_list() if arch_list is None else arch_list
    if not arch_list:   # a build that does not say: let torch decide
        return True
    for kind, code in map(parse_arch, arch_list):
        if kind == "sm" and code[0] == capability[0] and code[1] <= capability[1]:
            return True
        if kind == "compute" and code <= tuple(capability):
            return True
    return False


def parse_arch(arch: str) -> tuple[str, tuple[int, int]]:
    """sm_75 -> ("sm", (7, 5)); compute_100a -> ("compute", (10, 0)); anything else -> ("", (0, 0))."""
    found = re.fullmatch(r"(sm|compute)_(\d+)(\d)[a-z]*", arch)
    return (found.group(1), (int(found.group(2)), int(found.group(3)))) if found else ("", (0, 0))


def oldest_supported(arch_list: list[str] | None = None) -> str:
    arch_list = torch.cuda.get_arch_list() if arch_list is None else arch_list
    codes = sorted(code for kind, code in map(parse_arch, arch_list) if kind)
    return f"{codes[0][0]}.{codes[0][1]}" if codes else "?"


def usable_gpus() -> list[Gpu]:
    return [gpu for gpu in visible_gpus() if arch_supported(gpu.capability)]


def gpu(index: int | None) -> Gpu:
    """The visible GPU cuda:`index` (None: cuda, which is cuda:0 for the kit)."""
    return visible_gpus()[index or 0]


def visible_gpu_names() -> list[str]:
    """What CUDA_VISIBLE_DEVICES should say for each cuda:N this process sees: its own list's entries where
    it is set (so a worker of `CUDA_VISIBLE_DEVICES=2,3` given cuda:1 gets GPU 3), else the indices."""
    count = torch.cuda.device_count()
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return listed[:count] if listed else [str(i) for i in range(count)]


# ----------------------------------------------------------------------------- why no GPU

def driver_version() -> tuple[int, ...] | None:
    """The loaded NVIDIA kernel driver's version, e.g. (580, 65, 6), or None when none is loaded."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    found = re.search(r"Kernel Module(?: for \S+)?\s+(\d+(?:\.\d+)+)", text)
    return tuple(int(part) for part in found.group(1).split(".")) if found else None


def nvidia_pci_devices() -> int:
    """NVIDIA display or 3D controllers on the PCI bus: GPUs that are here whether or not a driver is."""
    count = 0
    for device in Path("/sys/bus/pci/devices").glob("*"):
        try:
            vendor, klass = (device / "vendor").read_text().strip(), (device / "class").read_text().strip()
        except OSError:
            continue
        count += vendor == "0x10de" and klass.startswith("0x03")
    return count


def wheel_hint() -> str:
    version = torch.__version__.split("+")[0]
    return (f"pip install torch=={version} --index-url https://download.pytorch.org/whl/{OLDER_CUDA_WHEEL} "
            "(CUDA 12.6: driver 525 or newer, capability 5.0 or newer)")


def cuda_problem() -> str | None:
    """Why this torch trains on the CPU although the machine has an NVIDIA GPU, and what to do; None when
    a GPU is used, or when there is none to use."""
    cuda = torch.version.cuda
    present = nvidia_pci_devices()
    if cuda is None:
        return (f"this torch ({torch.__version__}) is built without CUDA, and the machine has {present} NVIDIA "
                f"GPU(s): training runs on the CPU. Install a CUDA build, e.g. {wheel_hint()}") if present else None
    if torch.cuda.is_available():
        try:
            gpus = visible_gpus()
        except RuntimeError as err:
            return f"torch finds a GPU but cannot use it: {err}; training runs on the CPU"
        old = [g for g in gpus if not arch_supported(g.capability)]
        if not old:
            return None
        names = ", ".join(g.describe() for g in old)
        return (f"{names}: older than this torch supports (capability {oldest_supported()} and newer: it is "
                f"built for CUDA {cuda}), so {'it is' if len(old) == 1 else 'they are'} not used"
                + ("; training runs on the CPU" if len(old) == len(gpus) else "")
                + f". For an older GPU: {wheel_hint()}")
    driver = driver_version()
    if driver is None:
        return (f"the machine has {present} NVIDIA GPU(s) but no NVIDIA driver is loaded: training runs on the "
                f"CPU. Install NVIDIA's driver ({MIN_DRIVER.get(int(cuda.split('.')[0]), '?')} or newer for this "
                f"torch's CUDA {cuda})") if present else None
    shown = ".".join(map(str, driver))
    need = MIN_DRIVER.get(int(cuda.split(".")[0]))
    if need is not None and driver[0] < need:
        return (f"NVIDIA driver {shown} is older than this torch's CUDA {cuda} needs ({need} or newer): training "
                f"runs on the CPU. Update the driver, or install a torch for an older CUDA: {wheel_hint()}")
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None and not hidden.strip():
        return None   # hidden on purpose (a CPU worker, or the user)
    return (f"NVIDIA driver {shown} is loaded but CUDA finds no usable GPU"
            + (f" (CUDA_VISIBLE_DEVICES={hidden!r})" if hidden else "")
            + ": training runs on the CPU. nvidia-smi shows what the driver sees")


if __name__ == "__main__":   # the child process of probe(): the visible GPUs as JSON
    print(json.dumps([asdict(g) for g in read_gpus()]))
