"""Where and how fast tensors are computed: the device, the autocast precision, CPU threads, denormals.

    device = pick_device("auto")              # a GPU this torch can use (kit/gpus.py), else the CPU
    amp_dtype = pick_amp_dtype("auto", device)
    with autocast(device, amp_dtype): ...
    announce_device("auto", None, "auto", None)   # the first line of cv, best, bench and tune

--precision auto follows what the device computes natively, never torch.cuda.is_bf16_supported(): that
says yes where bf16 is only emulated (a T4 at capability 7.5, a P100 at 6.0), and there cuDNN has no bf16
convolutions, so every convolution would take a slow path.
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path

import torch

from kit.errors import ConfigError
from kit.gpus import arch_supported, cuda_problem, gpu, usable_gpus
from kit.log import log, warn

BF16_CAPABILITY = (8, 0)     # Ampere and newer: bf16 tensor cores, and cuDNN's bf16 convolutions
FP16_CAPABILITY = (7, 0)     # Volta and Turing: fp16 tensor cores (the GradScaler keeps small gradients)
TRITON_CAPABILITY = (7, 0)   # torch.compile's GPU code generator (Triton) runs from here on
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        try:
            usable = bool(usable_gpus()) and arch_supported(gpu(0).capability)
        except RuntimeError:   # CUDA is there but broken: the device line's warning says so
            usable = False
        return torch.device("cuda" if usable else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: no CUDA device is available here; use --device cpu or auto")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        try:
            supported = arch_supported(gpu(index).capability)
        except RuntimeError as err:   # the child that reads the GPUs' properties failed: say how
            raise ConfigError(f"--device {name}: {err}") from None
        if not supported:
            raise ConfigError(f"--device {name}: {cuda_problem()}")
    return torch.device(name)


def check_device(device_name: str, precision: str, *, compile: bool = False) -> None:
    """Refuse a device, precision or --compile this machine cannot run, before any data is decoded. Reads
    the GPU's capability without initialising CUDA in this process (kit/gpus.py)."""
    device = pick_device(device_name)
    choose_precision(precision, device)
    if compile and device.type == "cuda" and gpu(device.index).capability < TRITON_CAPABILITY:
        raise ConfigError(f"--compile: torch.compile makes GPU code with Triton, which needs CUDA capability 7.0 or "
                          f"newer, and {gpu(device.index).describe()} is older; leave --compile out")


# ----------------------------------------------------------------------------- precision

def cuda_auto_precision(capability: tuple[int, int]) -> tuple[torch.dtype | None, str]:
    """--precision auto on a GPU of `capability`: the autocast dtype (None: fp32) and why."""
    if tuple(capability) >= BF16_CAPABILITY:
        return torch.bfloat16, "native from capability 8.0"
    if tuple(capability) >= FP16_CAPABILITY:
        return torch.float16, "tensor cores, with loss scaling; bf16 is only emulated below capability 8.0"
    return None, "no tensor cores below capability 7.0, so fp16 would not pay, and bf16 is only emulated"


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 natively (AVX512-BF16 or AMX); emulated bf16 is slower than fp32."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def cpu_auto_precision() -> tuple[torch.dtype | None, str]:
    if cpu_has_native_bf16():
        return torch.bfloat16, "native on this CPU"
    return None, "this CPU has no native bf16"


def choose_precision(precision: str, device: torch.device) -> tuple[torch.dtype | None, str]:
    """The autocast dtype for --precision `precision` on `device` (None: plain fp32), and why."""
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("--precision fp16 needs CUDA; use bf16 or fp32 on the CPU")
    auto, why = cuda_auto_precision(gpu(device.index).capability) if device.type == "cuda" else cpu_auto_precision()
    if precision == "auto":
        return auto, why
    asked = DTYPES[precision]
    return asked, "as asked" if asked == auto else f"as asked; auto would take {dtype_name(auto)} here: {why}"


def pick_amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    return choose_precision(precision, device)[0]


def dtype_name(dtype: torch.dtype | None) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def autocast(device: torch.device, amp_dtype):
    return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()


# ----------------------------------------------------------------------------- threads and the CPU

def set_threads(num_threads: int | None) -> None:
    if num_threads:
        torch.set_num_threads(num_threads)


def cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def worker_threads(workers: int, num_threads: int | None) -> int:
    """CPU threads of each of `workers` processes on this machine: --num-threads, else the cores divided
    (GPU workers too: their data path runs on the host, and oversubscribed cores slow every worker)."""
    return num_threads or max(1, cpu_cores() // max(1, workers))


def flush_denormals_to_zero(device: torch.device) -> None:
    """Let the CPU treat floats below 1.2e-38 as zero (x86's FTZ/DAZ) in this thread and the threads it
    starts later: the command line calls it before torch starts its thread pool (kit/__main__.py).

    Pretrained weights make such values in activations and gradients, and x86 computes with them in
    microcode: fine-tuning dlib_age trained at 139 images/s on one core here against 215 with this on
    (and 265 from random init, which makes none). Nothing the metric can see is lost."""
    if device.type == "cpu":
        torch.set_flush_denormal(True)


def cpuinfo_field(name: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(name):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags() -> set[str]:
    return set((cpuinfo_field("flags") or "").split())


def cpu_name() -> str:
    return cpuinfo_field("model name") or "cpu"


def describe_cpu() -> str:
    """The CPU model and the flags that decide training speed here, for every figure quoted."""
    flags = cpu_flags()
    shown = [flag for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if flag in flags] or ["no AVX2"]
    return f"{cpu_name()} ({', '.join(shown)}{'' if cpu_has_native_bf16() else '; no native bf16'})"


# ----------------------------------------------------------------------------- the device line

def describe_device(device: torch.device) -> str:
    return gpu(device.index).describe() if device.type == "cuda" else f"cpu {describe_cpu()}"


def device_line(device: str, devices: list[str] | None, precision: str, num_threads: int | None, *,
                timed_precisions: bool = False) -> str:
    """One line naming where a command computes: each device (a GPU's name, capability and memory, or the
    CPU's model and flags), the precision and why, and the CPU threads (per worker with --devices).
    `timed_precisions`: best times fp32 and bf16 where a CPU computes bf16 natively, and keeps the faster."""
    names = devices or [device]
    resolved = list(dict.fromkeys(pick_device(name) for name in names))
    where = "; ".join(describe_device(d) for d in resolved)
    precisions = []
    for d in resolved:
        dtype, why = choose_precision(precision, d)
        if timed_precisions and precision == "auto" and d.type == "cpu" and dtype is not None:
            text = "fp32 or bf16, whichever trains faster here (timed)"
        else:
            text = f"{dtype_name(dtype)} ({why})"
        precisions.append(text if len(resolved) == 1 else f"{d}: {text}")
    if devices and len(devices) > 1:
        threads = worker_threads(len(devices), num_threads)
        head = f"devices: {len(devices)} workers ({', '.join(devices)}): {where}"
        thread_text = f"{threads} CPU thread(s) each"
    else:
        head = f"device: {where}"
        thread_text = f"{num_threads or torch.get_num_threads()} CPU thread(s)"
    return f"{head} | precision {', '.join(dict.fromkeys(precisions))} | {thread_text} | torch {torch.__version__}"


def announce_device(device: str, devices: list[str] | None, precision: str, num_threads: int | None, *,
                    timed_precisions: bool = False) -> None:
    """Log the device line, and warn when a CUDA build of torch leaves this machine's GPU unused."""
    problem = cuda_problem()
    try:
        log(device_line(device, devices, precision, num_threads, timed_precisions=timed_precisions))
    finally:   # also when the device asked for is refused: the reason is in the warning
        if problem:
            warn(f"warning: {problem}")


def default_devices(device: str, devices: list[str] | None) -> list[str] | None:
    """What cv and best train on when no --devices is given. On a GPU: worker processes, one per GPU (every
    usable GPU with --device auto, the one --device cuda[:N] names), each started by kit/launch.py with
    that GPU alone in its CUDA_VISIBLE_DEVICES, so that this process makes no CUDA context, one GPU
    included. On the CPU (or with no GPU torch can use): None, this process trains, at no cost of a start."""
    if devices is not None or device == "cpu":
        return devices
    if device.startswith("cuda"):   # with no CUDA here, None: the device's own check says why it is refused
        return [device] if torch.cuda.is_available() else None
    try:
        gpus = usable_gpus()
    except RuntimeError:   # CUDA is there but broken: auto trains on the CPU, and the device line says why
        return None
    return [f"cuda:{g.index}" for g in gpus] or None


def on_gpus(device: str, devices: list[str] | None) -> bool:
    """Whether cv or best with these options trains on GPUs alone (and so takes the GPUs' batch and rates:
    kit/models/registry.py gpu_recipe)."""
    return all(name.startswith("cuda") for name in default_devices(device, devices) or [device])
