"""The device, its precision and the device line, decided from faked GPU states (no GPU is needed: what is
tested is the decision, not the silicon)."""
import sys
from pathlib import Path

import pytest
import torch

import kit.device
import kit.gpus
from kit.device import announce_device, check_device, default_devices, device_line, on_gpus, pick_device
from kit.errors import ConfigError
from kit.gpus import Gpu, arch_supported, cuda_problem

sys.path.insert(0, str(Path(__file__).parent))
from fake_gpus import CUDA13_ARCHES, CUDA126_ARCHES, NAMES, fake_cuda, fresh_gpu_cache  # noqa: E402

pytestmark = pytest.mark.usefixtures(fresh_gpu_cache.__name__)


@pytest.mark.parametrize("capability, dtype, shown", [
    ((6, 0), None, "fp32 (no tensor cores below capability 7.0"),
    ((7, 5), torch.float16, "fp16 (tensor cores, with loss scaling; bf16 is only emulated below capability 8.0"),
    ((8, 0), torch.bfloat16, "bf16 (native from capability 8.0"),
    ((9, 0), torch.bfloat16, "bf16 (native from capability 8.0"),
])
def test_auto_precision_follows_the_capability_not_is_bf16_supported(monkeypatch, capability, dtype, shown):
    fake_cuda(monkeypatch, capability, arch_list=CUDA126_ARCHES)
    assert torch.cuda.is_bf16_supported()   # what the kit must not trust: emulation counts
    device = pick_device("auto")
    assert device.type == "cuda"
    assert kit.device.pick_amp_dtype("auto", device) == dtype
    line = device_line("auto", None, "auto", 4)
    assert line.startswith(f"device: cuda:0 {NAMES[capability]} (capability {capability[0]}.{capability[1]}, 16 GiB)")
    assert f"precision {shown}" in line and "4 CPU thread(s)" in line and torch.__version__ in line


def test_an_explicit_precision_is_kept_and_the_line_says_what_auto_would_take(monkeypatch):
    fake_cuda(monkeypatch, (7, 5))
    dtype, why = kit.device.choose_precision("bf16", torch.device("cuda"))
    assert dtype == torch.bfloat16 and "auto would take fp16 here" in why
    assert kit.device.choose_precision("fp16", torch.device("cuda")) == (torch.float16, "as asked")


@pytest.mark.parametrize("flags, dtype", [({"avx2"}, None), ({"avx2", "avx512f", "avx512_bf16"}, torch.bfloat16),
                                          ({"amx_bf16"}, torch.bfloat16)])
def test_the_cpu_keeps_its_precision_rule(monkeypatch, flags, dtype):
    monkeypatch.setattr(kit.device, "cpu_flags", lambda: flags)
    assert kit.device.pick_amp_dtype("auto", torch.device("cpu")) == dtype
    assert kit.device.pick_amp_dtype("fp32", torch.device("cpu")) is None
    with pytest.raises(ConfigError, match="--precision fp16 needs CUDA"):
        kit.device.pick_amp_dtype("fp16", torch.device("cpu"))


def test_best_says_it_times_both_precisions_on_a_native_bf16_cpu(monkeypatch):
    monkeypatch.setattr(kit.device, "cpu_flags", lambda: {"avx2", "avx512_bf16"})
    assert "fp32 or bf16, whichever trains faster here" in device_line("cpu", None, "auto", 2, timed_precisions=True)
    assert "precision bf16 (native on this CPU)" in device_line("cpu", None, "auto", 2)


def test_the_cpu_line_on_this_machine_names_the_model_flags_precision_and_threads(monkeypatch, caplog):
    monkeypatch.setattr(kit.gpus, "nvidia_pci_devices", lambda: 0)
    caplog.set_level("INFO", logger="facekit")
    announce_device("cpu", None, "auto", 2)
    assert len(caplog.records) == 1   # no GPU on the bus: nothing to warn about
    line = caplog.records[0].getMessage()
    assert line.startswith(f"device: cpu {kit.device.cpu_name()} (")
    assert "| precision " in line and "| 2 CPU thread(s) |" in line
    flags = kit.device.cpu_flags()
    assert ("avx2" in line) == ("avx2" in flags) and ("no native bf16" in line) != kit.device.cpu_has_native_bf16()


def test_cpu_workers_share_the_cores_in_the_line(monkeypatch):
    monkeypatch.setattr(kit.device, "cpu_cores", lambda: 8)
    line = device_line("auto", ["cpu", "cpu"], "fp32", None)
    assert line.startswith("devices: 2 workers (cpu, cpu): cpu ") and "4 CPU thread(s) each" in line


def test_two_gpus_are_both_used_by_default_and_named(monkeypatch):
    fake_cuda(monkeypatch, (7, 5), (7, 5))
    assert default_devices("auto", None) == ["cuda:0", "cuda:1"]
    assert default_devices("auto", ["cpu"]) == ["cpu"] and default_devices("cpu", None) is None
    line = device_line("auto", ["cuda:0", "cuda:1"], "auto", None)
    assert line.startswith("devices: 2 workers (cuda:0, cuda:1): cuda:0 Tesla T4 (capability 7.5, 16 GiB); "
                           "cuda:1 Tesla T4")
    assert "cuda:0: fp16 (tensor cores" in line


@pytest.mark.parametrize("gpus, device, expected", [
    ([(8, 0)], "auto", ["cuda:0"]),             # one GPU: one worker on it, not this process
    ([(8, 0)], "cuda", ["cuda"]),
    ([(7, 5), (7, 5)], "cuda:1", ["cuda:1"]),   # the GPU --device names, alone
    ([(6, 0), (7, 5)], "auto", ["cuda:1"]),     # the one GPU this torch has kernels for
    ([(8, 0)], "cpu", None),                    # the CPU: this process, no worker to start
    ([], "auto", None),
    ([(6, 0)], "auto", None),                   # no usable GPU: auto is the CPU
    ([], "cuda", None),                         # refused later, by the device's own check
])
def test_a_gpu_is_trained_on_by_a_worker_and_the_cpu_by_this_process(monkeypatch, gpus, device, expected):
    fake_cuda(monkeypatch, *gpus)
    assert default_devices(device, None) == expected
    line = device_line(device if gpus or device != "cuda" else "auto", expected, "auto", 4)
    assert line.startswith("device: ") and "| 4 CPU thread(s) |" in line   # one worker: the line of one process
    # The GPUs' batch and rates (kit/models/registry.py gpu_recipe) go with the GPUs, never with the CPU.
    assert on_gpus(device, None) == (expected is not None or device == "cuda")
    assert not on_gpus(device, ["cpu", "cpu"]) and on_gpus("cpu", ["cuda:0", "cuda:1"])


@pytest.mark.parametrize("capability, refused", [((6, 0), True), ((7, 5), False)])
def test_compile_is_refused_where_triton_cannot_run(monkeypatch, capability, refused):
    fake_cuda(monkeypatch, capability, arch_list=["sm_60", "sm_75"])
    if refused:
        with pytest.raises(ConfigError, match="--compile: .*Triton.*capability 7.0.*Tesla P100.*leave --compile out"):
            check_device("cuda", "auto", compile=True)
    else:
        check_device("cuda", "auto", compile=True)
    check_device("cuda", "auto")   # without --compile the GPU is fine


def test_arch_support_of_a_wheel():
    assert arch_supported((7, 5), CUDA13_ARCHES) and arch_supported((8, 9), CUDA13_ARCHES)
    assert not arch_supported((6, 0), CUDA13_ARCHES) and not arch_supported((7, 0), CUDA13_ARCHES)
    assert arch_supported((12, 1), ["sm_90", "compute_120"]) and not arch_supported((8, 0), ["compute_90a"])


def test_a_gpu_older_than_the_wheel_is_not_used_and_the_warning_says_why(monkeypatch, caplog):
    fake_cuda(monkeypatch, (6, 0))   # a P100 under the CUDA 13 wheel: torch sees it, has no kernels for it
    assert pick_device("auto").type == "cpu"
    with pytest.raises(ConfigError, match="--device cuda: cuda:0 Tesla P100.*capability 6.0.*7.5 and newer"):
        pick_device("cuda")
    caplog.set_level("INFO", logger="facekit")
    announce_device("auto", None, "auto", 2)
    line, warning = (record.getMessage() for record in caplog.records)
    assert line.startswith("device: cpu ")
    assert "older than this torch supports (capability 7.5 and newer: it is built for CUDA 13.0)" in warning
    assert "training runs on the CPU" in warning and "--index-url https://download.pytorch.org/whl/cu126" in warning


@pytest.mark.parametrize("state, message", [
    (dict(driver=None, pci=1), "1 NVIDIA GPU(s) but no NVIDIA driver is loaded: training runs on the CPU. Install "
                               "NVIDIA's driver (580 or newer for this torch's CUDA 13.0)"),
    (dict(driver=(535, 104, 5), pci=1), "NVIDIA driver 535.104.5 is older than this torch's CUDA 13.0 needs (580 or "
                                        "newer): training runs on the CPU. Update the driver, or install"),
    (dict(cuda=None, pci=2), "is built without CUDA, and the machine has 2 NVIDIA GPU(s)"),
    (dict(driver=None, pci=0), None),   # a CPU machine: nothing to warn about
    (dict(cuda=None, pci=0), None),
])
def test_a_cuda_build_without_a_usable_gpu_says_why(monkeypatch, state, message):
    fake_cuda(monkeypatch, **state)
    problem = cuda_problem()
    assert (problem is None) if message is None else (message in problem), problem
    assert pick_device("auto").type == "cpu"


def test_nothing_here_initialises_cuda_for_a_parent_of_workers(monkeypatch, caplog):
    fake_cuda(monkeypatch, (8, 0), (8, 0))
    read = []
    monkeypatch.setattr(kit.gpus, "probe", lambda: read.append(1) or kit.gpus.read_gpus())
    caplog.set_level("INFO", logger="facekit")
    devices = default_devices("auto", None)
    announce_device("auto", devices, "auto", None)
    for device in devices:
        check_device(device, "auto", compile=True)
    assert read == [1]   # read once per process, in the child
    assert "bf16 (native from capability 8.0" in caplog.text


def test_the_child_probe_reads_this_torch(monkeypatch):
    """The real child process, on this machine: no GPU gives an empty list (and no error)."""
    assert kit.gpus.probe() == [] or all(isinstance(gpu, Gpu) for gpu in kit.gpus.probe())


def test_a_gpu_whose_properties_cannot_be_read_is_named_not_a_traceback(monkeypatch):
    fake_cuda(monkeypatch, (8, 0))

    def broken():
        raise RuntimeError("reading the GPUs' properties failed: CUDA error: unknown error")

    monkeypatch.setattr(kit.gpus, "probe", broken)
    with pytest.raises(ConfigError, match="--device cuda:0: reading the GPUs' properties failed: CUDA error"):
        pick_device("cuda:0")
    assert pick_device("auto").type == "cpu"
    assert "torch finds a GPU but cannot use it" in cuda_problem()
