"""`python -m launcher.doctor`: its verdicts on this CPU machine, and on GPU machines described by hand."""

from __future__ import annotations

import builtins
import subprocess
import sys
import time
from dataclasses import replace
from importlib import metadata

import pytest

from launcher import doctor
from yolo_ddp.topology import GpuInfo

H200 = tuple(GpuInfo(index=i, name="NVIDIA H200", compute_capability=(9, 0)) for i in range(2))
GPU_NODE = doctor.Facts(torch_version="2.14.1+cu130", torch_cuda="13.0", cuda_devices=2, nccl_version="2.30.7",
                        driver="580.65.06", driver_cuda=13000, nvml_error=None,
                        dali_builds={"nvidia-dali-cuda130": "2.4.0"}, gpus=H200, link_table="GPU0 X NV18")


def verdicts(facts: doctor.Facts) -> dict[str, doctor.Check]:
    return {c.name: c for c in doctor.diagnose(facts)}


def test_cpu_machine_says_no_gpu_and_what_would_run_within_5s():
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "launcher.doctor"], capture_output=True, text=True, timeout=60)
    took = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "No GPU: `python -m launcher` would run 1 CPU process" in out and "gloo" in out and "torch DataLoader" in out
    assert "[n/a ] gpus     no GPU" in out and "this is a CPU machine" in out
    for name in ("driver", "torch", "dali", "nccl", "nvml", "gpus"):
        assert f"] {name}" in out
    assert took < 15, f"doctor took {took:.1f} s (measured ~2.5 s alone; the suite's load explains some slack)"


def test_gpu_node_that_matches_is_all_ok():
    text, ok = doctor.report(GPU_NODE)
    assert ok and "[fail]" not in text and "[warn]" not in text
    assert "would run 2 rank(s)" in text and "NCCL" in text and "-> bf16" in text and "DALI `mixed`" in text


def test_dali_cuda12_build_beside_cuda13_torch_fails_with_the_pip_command():
    facts = replace(GPU_NODE, dali_builds={"nvidia-dali-cuda120": "2.4.0"})
    check = verdicts(facts)["dali"]
    assert check.verdict == "fail" and "CUDA 12" in check.detail
    assert check.fix.startswith("pip uninstall -y nvidia-dali-cuda120 && pip install nvidia-dali-cuda130==2.4.0")
    text, ok = doctor.report(facts)
    assert not ok and "torch DataLoader (DALI unusable" in text
    # The same pair on a CPU machine only warns: DALI's CPU pipelines do not need CUDA libraries.
    cpu = replace(facts, cuda_devices=0, driver=None, driver_cuda=None, nvml_error="not found", gpus=())
    assert verdicts(cpu)["dali"].verdict == "warn"


def test_dali_cuda12_build_with_cuda12_torch_is_fine():
    facts = replace(GPU_NODE, torch_cuda="12.8", dali_builds={"nvidia-dali-cuda120": "2.4.0"})
    assert verdicts(facts)["dali"].verdict == "ok"


def test_missing_dali_is_a_warning_with_the_install_command(monkeypatch):
    real = metadata.version

    def version(name):
        if name.startswith("nvidia-dali"):
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(doctor.metadata, "version", version)
    facts = doctor.gather()
    assert facts.dali_builds == {}
    check = verdicts(facts)["dali"]
    assert check.verdict == "warn" and "not installed" in check.detail
    assert check.fix.startswith("pip install nvidia-dali-cuda130==2.4.0")
    assert "no DALI" in doctor.report(facts)[0]


def test_dali_that_fails_to_import_fails(monkeypatch):
    real_import = builtins.__import__

    def broken(name, *args, **kwargs):
        if name.startswith("nvidia.dali"):
            raise ImportError("libcudart.so.13: cannot open shared object file")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "nvidia.dali", raising=False)
    monkeypatch.setattr(builtins, "__import__", broken)
    builds, error = doctor._dali()
    assert builds and "libcudart" in error
    check = verdicts(replace(GPU_NODE, dali_builds=builds, dali_error=error))["dali"]
    assert check.verdict == "fail" and "pip install --force-reinstall" in check.fix


def test_nvml_failure(monkeypatch):
    pynvml = pytest.importorskip("pynvml")

    def no_driver():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    monkeypatch.setattr(pynvml, "nvmlInit", no_driver)
    driver, cuda, error = doctor._nvml()
    assert driver is None and cuda is None and "Driver Not Loaded" in error
    # No driver and no GPU: not applicable. GPUs visible to torch but NVML broken: a warning with the fix.
    assert verdicts(doctor.gather())["nvml"].verdict == "n/a"
    check = verdicts(replace(GPU_NODE, driver=None, driver_cuda=None, nvml_error=error))["nvml"]
    assert check.verdict == "warn" and "libnvidia-ml" in check.fix


def test_driver_older_than_torchs_cuda_fails():
    check = verdicts(replace(GPU_NODE, driver="550.54", driver_cuda=12040))["driver"]
    assert check.verdict == "fail" and "R580" in check.fix


def test_gpus_hidden_by_cuda_visible_devices_fail():
    check = verdicts(replace(GPU_NODE, cuda_devices=0, visible=""))["torch"]
    assert check.verdict == "fail" and "unset CUDA_VISIBLE_DEVICES" in check.fix


def test_amp_auto_is_fp16_on_gpus_without_native_bf16():
    t4 = tuple(GpuInfo(index=i, name="Tesla T4", compute_capability=(7, 5)) for i in range(2))
    assert doctor.amp_choice(replace(GPU_NODE, gpus=t4)) == "fp16"
    assert doctor.amp_choice(GPU_NODE) == "bf16"
