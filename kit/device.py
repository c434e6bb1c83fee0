"""Where and how fast tensors are computed: the device, the autocast precision, CPU threads, denormals.

    device = pick_device("auto")            # cuda if there is one, else cpu
    amp_dtype = pick_amp_dtype("auto", device)
    with autocast(device, amp_dtype): ...
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch

from kit.errors import ConfigError


def pick_device(name: str) -> torch.device:
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: no CUDA device is available here; use --device cpu or auto")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_device(device_name: str, precision: str) -> None:
    """Refuse a device or precision this machine does not have, before any data is decoded."""
    device = pick_device(device_name)
    pick_amp_dtype(precision, device)


def set_threads(num_threads: int | None) -> None:
    if num_threads:
        torch.set_num_threads(num_threads)


def flush_denormals_to_zero(device: torch.device) -> None:
    """Let the CPU treat floats below 1.2e-38 as zero (x86's FTZ/DAZ) in this thread and the threads it
    starts later: the command line calls it before torch starts its thread pool (kit/__main__.py).

    Pretrained weights make such values in activations and gradients, and x86 computes with them in
    microcode: fine-tuning dlib_age trained at 139 images/s on one core here against 215 with this on
    (and 265 from random init, which makes none). Nothing the metric can see is lost."""
    if device.type == "cpu":
        torch.set_flush_denormal(True)


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 natively (AVX512-BF16 or AMX); emulated bf16 is slower than fp32."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


def describe_cpu() -> str:
    """The CPU model and the flags that decide training speed here, for every figure quoted."""
    flags = cpu_flags()
    vector = "AVX-512" if "avx512f" in flags else ("AVX2" if "avx2" in flags else "no AVX2")
    bf16 = "native bf16" if cpu_has_native_bf16() else "no native bf16"
    return f"{cpu_name()} ({vector}, {bf16}, {torch.get_num_threads()} threads)"


def pick_amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type != "cuda":
            raise ConfigError("--precision fp16 needs CUDA; use bf16 or fp32 on the CPU")
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else None


def autocast(device: torch.device, amp_dtype):
    return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
