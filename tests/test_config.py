"""Every experiment composes against the typed schema; typos, wrong types and bad values fail early."""

from __future__ import annotations

import pytest
from hydra import compose

from launcher.__main__ import to_config
from tests.conftest import CONF
from yolo_ddp.config import Config

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
TRAIN_PROFILES = sorted(p.stem for p in (CONF / "train").glob("*.yaml"))


pytestmark = pytest.mark.usefixtures("hydra_ctx")


def typed(overrides: list[str]) -> Config:
    return to_config(compose(config_name="config", overrides=[*overrides, "run_dir=/tmp/x"]))


def test_experiments_exist():
    assert "pcb_defects" in EXPERIMENTS


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("profile", TRAIN_PROFILES)
def test_every_experiment_composes(experiment, profile):
    cfg = typed([f"+experiment={experiment}", f"train={profile}"])
    assert isinstance(cfg, Config)
    assert cfg.train.batch >= 1 and cfg.data.imgsz % 32 == 0


def test_cpu_profile_shrinks_the_job_and_cli_still_wins():
    cfg = typed(["+experiment=pcb_defects", "train=cpu_quick", "data.imgsz=320"])
    assert cfg.data.imgsz == 320
    assert cfg.train.epochs < 50 and cfg.data.synthetic.n_train <= 512


@pytest.mark.parametrize("override", ["train.bacth=16", "data.imgsize=320", "launcher.nproc=2"])
def test_typo_key_fails_at_compose(override):
    with pytest.raises(Exception, match=r"(?i)(not in struct|key|could not override)"):
        compose(config_name="config", overrides=["+experiment=pcb_defects", override])


def test_wrong_type_fails_at_compose():
    with pytest.raises(Exception, match="train.epochs"):
        compose(config_name="config", overrides=["train.epochs=ten"])
    with pytest.raises(ValueError, match=r"train\.batch.*integer >= 1\) or auto"):  # int or "auto": checked after
        typed(["train.batch=sixteen"])
    assert typed(["train.batch=auto"]).train.batch == "auto"


@pytest.mark.parametrize(
    ("override", "key"),
    [("data.imgsz=300", "data.imgsz"), ("train.amp=fp8", "train.amp"), ("train.epochs=0", "train.epochs"),
     ("launcher.nproc_per_node=two", "launcher.nproc_per_node"), ("model.cfg=yolov8n.pt", "model.cfg"),
     ("data.backend=opencv", "data.backend"), ("data.mosaic=1.5", "data.mosaic"),
     ("data.close_mosaic=-1", "data.close_mosaic"), ("data.dali.prefetch=0", "data.dali.prefetch"),
     ("train.batch=0", "train.batch"), ("train.batch=-8", "train.batch"), ("train.allow_downgrade=[vram]", "train.allow_downgrade"),
     ("train.multi_scale=[2,3]", "train.multi_scale"), ("train.imgsz_schedule=[[0,300]]", "train.imgsz_schedule"),
     ("train.memory_fraction=0", "train.memory_fraction")],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(Exception, match=key.replace(".", r"\.")):
        typed([override])


def test_custom_data_requires_a_path():
    with pytest.raises(Exception, match="data.path"):
        typed(["data=custom"])


@pytest.mark.parametrize(("override", "key", "close"), [
    ("+train.epoch=5", "train.epoch", "train.epochs"), ("+trian.epochs=3", "trian.epochs", "train.epochs"),
    ("+data.synthetic.nn_train=8", "data.synthetic.nn_train", "data.synthetic.n_train"),
])
def test_keys_added_with_plus_are_checked_against_the_schema(override, key, close):
    # '+' adds keys even in struct mode; without the check the run trained with the setting dropped.
    with pytest.raises(ValueError, match=rf"'{key}' \(did you mean '{close}'\?\)"):
        typed(["+experiment=pcb_defects", override])


def test_unknown_key_without_a_close_match_says_remove_it():
    with pytest.raises(ValueError, match=r"'zzz_top'.*remove it"):
        typed(["+zzz_top=1"])


def test_pku_pcb_data_composes_and_needs_its_path():
    cfg = typed(["+experiment=pcb_defects", "data=pku_pcb", "data.path=/data/PCB_DATASET"])
    assert cfg.data.name == "pku_pcb" and cfg.data.path == "/data/PCB_DATASET" and 0 < cfg.data.val_fraction < 1
    with pytest.raises(ValueError, match="data.path"):
        typed(["+experiment=pcb_defects", "data=pku_pcb"])
    with pytest.raises(ValueError, match="data.val_fraction"):
        typed(["data=pku_pcb", "data.path=/x", "data.val_fraction=1"])
