"""`python -m launcher.doctor`: can this machine run GPU jobs, and if not, what exactly to fix.

One line per check (driver, torch CUDA, DALI build, NCCL, NVML, GPUs and links), each with a verdict:
ok, warn (runs, but slower or with a fallback), fail (a GPU job would break; the line says the fix), or
n/a (not used on this machine). The last line says what `python -m launcher` would run here. Exit code 1
when any check fails. Never initialises CUDA and imports neither DALI's pipelines nor Ultralytics, so it
answers in a few seconds (`make train` runs it first on machines with nvidia-smi).
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, field
from importlib import metadata

# DALI's wheels, one per CUDA major; `make install CUDA=<major>` installs the matching extra.
DALI_BUILDS = {"nvidia-dali-cuda120": 12, "nvidia-dali-cuda130": 13}
DALI_PIN = "2.4.0"
DRIVER_FOR_CUDA = {12: "R525", 13: "R580"}  # the oldest driver branch that runs each CUDA major
VERDICTS = ("ok", "warn", "fail", "n/a")


@dataclass(frozen=True)
class Facts:
    """What the checks judge; `gather()` reads them from this machine, tests build them by hand."""

    torch_version: str
    torch_cuda: str | None  # torch.version.cuda: the CUDA the wheel was built for; None for a CPU build
    cuda_devices: int  # torch.cuda.device_count(): the GPUs this process may use (CUDA_VISIBLE_DEVICES)
    nccl_version: str | None
    driver: str | None  # NVML's driver version; None when NVML failed
    driver_cuda: int | None  # NVML's nvmlSystemGetCudaDriverVersion, e.g. 13000
    nvml_error: str | None
    dali_builds: dict[str, str] = field(default_factory=dict)  # installed DALI distribution → version
    dali_error: str | None = None  # why `import nvidia.dali` failed, when a build is installed
    gpus: tuple = ()  # yolo_ddp.topology GpuInfo of every GPU on the node (NVML/nvidia-smi order)
    link_table: str = ""
    visible: str | None = None  # CUDA_VISIBLE_DEVICES


@dataclass(frozen=True)
class Check:
    name: str
    verdict: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"[{self.verdict:<4}] {self.name:<8} {self.detail}"
        return text + (f"\n{'':16}fix: {self.fix}" if self.fix else "")


def _major(version: str | None) -> int | None:
    return int(version.split(".")[0]) if version else None


def _cuda_text(driver_cuda: int) -> str:
    return f"{driver_cuda // 1000}.{driver_cuda % 1000 // 10}"


def check_torch(f: Facts) -> Check:
    if f.torch_cuda is None:
        return Check("torch", "warn" if f.driver else "ok", f"torch {f.torch_version}, a CPU-only build",
                     "pip install torch==2.14.1 (PyPI's Linux wheel is the CUDA 13 build)" if f.driver else "")
    if f.cuda_devices:
        return Check("torch", "ok", f"torch {f.torch_version}, CUDA {f.torch_cuda} build, {f.cuda_devices} GPU(s) "
                     "visible")
    if f.driver:  # a driver answers but torch sees nothing: hidden or unusable
        hidden = f.visible is not None and not f.visible.strip(", ")
        return Check("torch", "fail", f"torch {f.torch_version} (CUDA {f.torch_cuda}) sees no GPU although the "
                     f"driver {f.driver} answers", "unset CUDA_VISIBLE_DEVICES" if hidden else
                     "check the driver line above and `nvidia-smi`; inside a container run with --gpus all")
    return Check("torch", "ok", f"torch {f.torch_version}, CUDA {f.torch_cuda} build; no GPU on this machine")


def check_driver(f: Facts) -> Check:
    if f.driver is None:
        return Check("driver", "n/a" if not f.cuda_devices else "warn",
                     "no NVIDIA driver answers: this is a CPU machine" if not f.cuda_devices else
                     "torch sees GPUs but NVML does not answer (see the nvml line)")
    need = _major(f.torch_cuda)
    has = f.driver_cuda // 1000 if f.driver_cuda else None
    detail = f"driver {f.driver}" + (f", runs CUDA up to {_cuda_text(f.driver_cuda)}" if f.driver_cuda else "")
    if need and has is not None and has < need:
        return Check("driver", "fail", f"{detail}; torch is a CUDA {f.torch_cuda} build",
                     f"install an NVIDIA driver for CUDA {need} ({DRIVER_FOR_CUDA.get(need, 'newer')} or newer), or a "
                     f"torch built for CUDA {has}")
    return Check("driver", "ok", detail)


def check_nvml(f: Facts) -> Check:
    if f.nvml_error is None:
        return Check("nvml", "ok", f"NVML answers: {len(f.gpus)} GPU(s) on the node")
    if not f.cuda_devices:
        return Check("nvml", "n/a", f"no NVML ({f.nvml_error}): no NVIDIA driver, so no GPU")
    return Check("nvml", "warn", f"NVML failed ({f.nvml_error}): GPU links come from nvidia-smi or torch (PCIe "
                 "assumed), so the sync plan may pick a slower strategy",
                 "make libnvidia-ml.so.1 reachable (container: --gpus all or NVIDIA_DRIVER_CAPABILITIES=utility,"
                 "compute) and keep nvidia-ml-py installed")


def check_dali(f: Facts) -> Check:
    gpu = f.cuda_devices > 0
    want = _major(f.torch_cuda) or 13
    wanted = next((name for name, major in DALI_BUILDS.items() if major == want), None)
    install = f"pip install {wanted}=={DALI_PIN}" if wanted else f"a DALI build for CUDA {want}"
    if not f.dali_builds:
        return Check("dali", "warn", "NVIDIA DALI is not installed: data.backend=auto uses the torch DataLoader"
                     + (" (slower on GPUs)" if gpu else " (what it uses on CPU anyway); data.backend=dali fails"),
                     f"{install} (or `make install`)")
    if len(f.dali_builds) > 1:
        others = " ".join(n for n in f.dali_builds if n != wanted)
        return Check("dali", "fail", f"several DALI builds installed ({', '.join(f.dali_builds)}); they overwrite "
                     "each other's nvidia/dali files", f"pip uninstall -y {others} && pip install --force-reinstall "
                     f"{wanted}=={DALI_PIN}")
    name, version = next(iter(f.dali_builds.items()))
    major = DALI_BUILDS.get(name)
    if f.dali_error:
        return Check("dali", "fail", f"{name} {version} is installed but does not import: {f.dali_error}",
                     f"pip install --force-reinstall {name}=={version}")
    if f.torch_cuda and major is not None and major != want:
        fix = f"pip uninstall -y {name} && {install}   (or: make install CUDA={want})"
        if gpu:
            return Check("dali", "fail", f"{name} {version} needs CUDA {major} libraries (NPP, nvJPEG, loaded when a "
                         f"GPU pipeline is built), but torch is a CUDA {f.torch_cuda} build", fix)
        return Check("dali", "warn", f"{name} {version} is for CUDA {major}, torch for CUDA {f.torch_cuda}: DALI's CPU "
                     "pipelines run, its GPU pipelines would not", fix)
    return Check("dali", "ok", f"{name} {version}" + (" (GPU `mixed` decode)" if gpu else
                                                     " (CPU pipelines only here: data.backend=dali)"))


def check_nccl(f: Facts) -> Check:
    if not f.cuda_devices:
        return Check("nccl", "n/a", (f"NCCL {f.nccl_version} in torch; " if f.nccl_version else "") +
                     "unused without GPUs: ranks talk over gloo")
    if f.nccl_version is None:
        return Check("nccl", "fail", "this torch has no NCCL: multi-GPU jobs cannot start",
                     "install the Linux CUDA wheel of torch (pip install torch==2.14.1)")
    return Check("nccl", "ok", f"NCCL {f.nccl_version}")


def check_gpus(f: Facts) -> Check:
    if not f.gpus:
        return Check("gpus", "n/a", "no GPU")
    names = ", ".join(f"{g.index}: {g.name}" + (f" (sm {g.compute_capability[0]}{g.compute_capability[1]})"
                                                if g.compute_capability else "") for g in f.gpus)
    detail = f"{len(f.gpus)} on the node [{names}]"
    if f.visible is not None:
        detail += f"; CUDA_VISIBLE_DEVICES={f.visible} ({f.cuda_devices} for this job)"
    table = "\n".join(f"{'':16}{row}" for row in f.link_table.splitlines())
    return Check("gpus", "ok", detail + (f"\n{table}" if table else ""))


def amp_choice(f: Facts) -> str:
    """train.amp=auto: bf16 on GPUs with native bf16 (compute capability >= 8.0), else fp16; off on CPU."""
    ccs = [g.compute_capability for g in f.gpus if g.compute_capability]
    if not f.cuda_devices:
        return "off"
    return "bf16" if ccs and min(ccs) >= (8, 0) else "fp16"


def would_run(f: Facts, checks: list[Check]) -> str:
    dali = next(c for c in checks if c.name == "dali")
    if not f.cuda_devices:
        alt = "DALI CPU pipelines with data.backend=dali" if dali.verdict in ("ok", "warn") and f.dali_builds \
            else "no DALI"
        from yolo_ddp.config import AUTO_CPU_RANKS  # a stdlib-only module: safe where torch is broken

        return (f"No GPU: `python -m launcher` would run {AUTO_CPU_RANKS} CPU process (launcher.nproc_per_node=auto; "
                f"launcher.nproc_per_node=2 runs 2 ranks over gloo), data from the torch DataLoader "
                f"(data.backend=auto; {alt}), amp off, memory planned from host RAM.")
    data = "DALI `mixed` GPU decode" if dali.verdict == "ok" else "the torch DataLoader (DALI unusable, see above)"
    return (f"GPU: `python -m launcher` would run {f.cuda_devices} rank(s), one per visible GPU, over NCCL (flags on "
            f"a gloo side group), data from {data}, train.amp=auto -> {amp_choice(f)}.")


def diagnose(f: Facts) -> list[Check]:
    return [check_driver(f), check_torch(f), check_dali(f), check_nccl(f), check_nvml(f), check_gpus(f)]


def _nvml() -> tuple[str | None, int | None, str | None]:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as e:  # no library, no driver (NVMLError_LibraryNotFound / DriverNotLoaded)
        return None, None, str(e) or type(e).__name__
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        cuda = int(pynvml.nvmlSystemGetCudaDriverVersion())
        return (driver.decode() if isinstance(driver, bytes) else str(driver)), cuda, None
    finally:
        pynvml.nvmlShutdown()


def _dali() -> tuple[dict[str, str], str | None]:
    builds = {}
    for name in DALI_BUILDS:
        with contextlib.suppress(metadata.PackageNotFoundError):
            builds[name] = metadata.version(name)
    if not builds:
        return builds, None
    try:
        import nvidia.dali  # noqa: F401  (the Python side only: GPU libraries load at pipeline build)
    except Exception as e:  # ImportError, or OSError from a missing shared library
        return builds, f"{type(e).__name__}: {e}"
    return builds, None


def gather() -> Facts:
    import torch

    from yolo_ddp.topology import link_matrix_table, probe_node

    driver, driver_cuda, nvml_error = _nvml()
    node = probe_node(allow_cuda_init=False)  # NVML, else nvidia-smi; every GPU on the node
    nccl = None
    if torch.version.cuda and torch.distributed.is_nccl_available():
        nccl = ".".join(map(str, torch.cuda.nccl.version()))
    builds, dali_error = _dali()
    return Facts(torch_version=torch.__version__, torch_cuda=torch.version.cuda,
                 cuda_devices=torch.cuda.device_count() if torch.version.cuda else 0, nccl_version=nccl,
                 driver=driver, driver_cuda=driver_cuda, nvml_error=nvml_error, dali_builds=builds,
                 dali_error=dali_error, gpus=node.gpus, link_table=link_matrix_table(node) if node.gpus else "",
                 visible=os.environ.get("CUDA_VISIBLE_DEVICES"))


def report(f: Facts) -> tuple[str, bool]:
    checks = diagnose(f)
    ok = all(c.verdict != "fail" for c in checks)
    return "\n".join([*(c.line() for c in checks), would_run(f, checks)]), ok


def main() -> int:
    text, ok = report(gather())
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
