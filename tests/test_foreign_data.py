"""Pascal VOC (PKU-Market-PCB layout) and COCO JSON sets: converted once into the cache, boxes on the drawn
objects, a seeded split, and every malformed annotation named in one paragraph."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.foreign_sets import make_coco, make_pku, make_roboflow, voc_xml
from yolo_ddp.config import DataConfig
from yolo_ddp.data.dataset import build_index
from yolo_ddp.data.source import resolve_data_yaml
from yolo_ddp.data.spec import DataError, load_data_spec


def data_cfg(path: Path, tmp_path: Path, **kw) -> DataConfig:
    return DataConfig(name="pku_pcb", path=str(path), cache_dir=str(tmp_path / "cache"), **kw)


def source_of(link: str) -> Path:
    return Path(os.path.realpath(link))


def assert_boxes_on_drawn_objects(yaml_path: Path, drawn: dict, tmp_path: Path) -> None:
    """Every converted box matches its drawn red rectangle to a pixel (VOC: Ultralytics' 1-based corners make it
    one pixel short on the right and bottom) and holds only red inside."""
    spec = load_data_spec(yaml_path)
    seen = 0
    for split, sources in (("train", spec.train), ("val", spec.val)):
        index = build_index(sources, spec.nc, tmp_path / "index", split)
        for i, f in enumerate(index.im_files):
            want = sorted((spec.names and list(spec.names.values()).index(n), *b) for n, b in drawn[source_of(f)])
            im = cv2.imread(f)
            h, w = im.shape[:2]
            got = []
            for c, cx, cy, bw, bh in index.labels_for(i).tolist():
                x0, y0, x1, y1 = (cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h
                # 2 px in from the edges, where JPEG's chroma blur ends
                inner = im[int(np.ceil(y0)) + 2 : int(y1) - 2, int(np.ceil(x0)) + 2 : int(x1) - 2].reshape(-1, 3)
                red = (inner[:, 2] > 200) & (inner[:, 1] < 60) & (inner[:, 0] < 60)
                assert len(inner) and red.mean() > 0.98, (f, c, x0, y0, x1, y1, red.mean())
                got.append((int(c), x0, y0, x1, y1))
            assert len(got) == len(want), f
            for g, t in zip(sorted(got), want, strict=True):
                assert g[0] == t[0] and np.abs(np.array(g[1:]) - np.array(t[1:])).max() <= 1.001, (f, g, t)
            seen += 1
    assert seen == len(drawn)


def test_pku_layout_converts_with_every_box_on_its_drawn_object(tmp_path):
    drawn = make_pku(tmp_path / "PCB_DATASET")
    yaml_path = resolve_data_yaml(data_cfg(tmp_path / "PCB_DATASET", tmp_path, val_fraction=0.4))
    spec = load_data_spec(yaml_path)
    assert spec.names == {0: "missing_hole", 1: "short"}  # as written in the XML, sorted
    train, val = (Path(p).read_text().split() for p in (spec.train[0], spec.val[0]))
    assert len(train) == 6 and len(val) == 4
    assert {Path(os.path.realpath(p)).parent.name for p in val} == {"Missing_hole", "Short"}  # each class folder
    assert_boxes_on_drawn_objects(yaml_path, drawn, tmp_path)


def test_relative_paths_and_default_cache_dir_from_any_working_directory(tmp_path, monkeypatch):
    """The README's command as written: data.path relative, data.cache_dir left at its relative default. The
    converted data.yaml and its train/val lists must name real files wherever the run starts."""
    make_pku(tmp_path / "sets" / "PCB_DATASET")
    (tmp_path / "elsewhere").mkdir()
    for cwd, path in ((tmp_path / "sets", "PCB_DATASET"), (tmp_path / "elsewhere", "../sets/PCB_DATASET")):
        monkeypatch.chdir(cwd)
        yaml_path = resolve_data_yaml(DataConfig(name="pku_pcb", path=path, val_fraction=0.4))
        assert yaml_path.is_absolute() and yaml_path.is_relative_to(cwd / ".cache" / "yolo_ddp" / "converted")
        spec = load_data_spec(yaml_path)
        for listing in (*spec.train, *spec.val):
            lines = Path(listing).read_text().split()
            assert lines and all(Path(p).is_absolute() and Path(p).is_file() for p in lines), listing
        monkeypatch.chdir(tmp_path)  # the set and the other cwd's cache still resolve after the cwd moves
        assert all(Path(p).is_file() for p in Path(spec.train[0]).read_text().split())


def test_split_is_seeded_and_conversion_happens_once(tmp_path, caplog):
    make_pku(tmp_path / "PCB_DATASET")
    first = resolve_data_yaml(data_cfg(tmp_path / "PCB_DATASET", tmp_path))
    mtime = first.stat().st_mtime_ns
    assert resolve_data_yaml(data_cfg(tmp_path / "PCB_DATASET", tmp_path)) == first
    assert first.stat().st_mtime_ns == mtime  # reused, not rewritten
    other_cache = resolve_data_yaml(DataConfig(name="x", path=str(tmp_path / "PCB_DATASET"),
                                               cache_dir=str(tmp_path / "cache2")))
    assert (other_cache.parent / "val.txt").read_text().replace("cache2", "cache") == \
        (first.parent / "val.txt").read_text()  # same split from scratch
    reseeded = resolve_data_yaml(data_cfg(tmp_path / "PCB_DATASET", tmp_path, split_seed=1))
    assert reseeded != first


def test_malformed_voc_names_every_file_and_object(tmp_path):
    root = tmp_path / "PCB_DATASET"
    make_pku(root, per_class=2)
    ann = root / "Annotations" / "Short"
    (ann / "02_short_01.xml").write_text(voc_xml("02_short_01.jpg", 128, 96, [
        ("short", (10, 10, 40, 40)), ("short", (50, 10, 30, 40)), ("", (1, 1, 9, 9)), ("spur", (100, 10, 400, 40))]))
    (ann / "02_short_02.xml").write_text("<annotation><filename>02_short_02.jpg</filename>")
    (ann / "02_short_03.xml").write_text(voc_xml("02_short_03.jpg", 128, 96, [("short", (1, 1, 9, 9))]))
    with pytest.raises(DataError) as err:
        resolve_data_yaml(data_cfg(root, tmp_path))
    msg = str(err.value)
    assert "\n" not in msg and "5 malformed VOC" in msg and "Nothing was converted" in msg
    for needle in ("Short/02_short_01.xml object 2 'short': box (50, 10, 30, 40) is empty",
                   "02_short_01.xml object 3: no <name>", "02_short_01.xml object 4 'spur'", "outside the 128x96",
                   "02_short_02.xml: not valid XML", "02_short_03.xml: no image named '02_short_03.jpg'"):
        assert needle in msg, msg
    assert not (tmp_path / "cache" / "converted").exists() or not any((tmp_path / "cache" / "converted").iterdir())


def test_coco_train_and_val_json_with_ids_that_are_not_1_to_k(tmp_path):
    drawn = make_coco(tmp_path / "coco", {"train": 6, "val": 3})
    yaml_path = resolve_data_yaml(data_cfg(tmp_path / "coco" / "annotations" / "instances_train.json", tmp_path))
    spec = load_data_spec(yaml_path)
    assert spec.names == {0: "short", 1: "missing_hole"}  # used categories, in id order (3, 7)
    assert len(Path(spec.train[0]).read_text().split()) == 6 and len(Path(spec.val[0]).read_text().split()) == 3
    assert_boxes_on_drawn_objects(yaml_path, drawn, tmp_path)


def test_one_coco_json_is_split_by_val_fraction(tmp_path):
    make_coco(tmp_path / "coco", {"all": 10})
    yaml_path = resolve_data_yaml(data_cfg(tmp_path / "coco" / "annotations" / "instances_all.json", tmp_path,
                                           val_fraction=0.3))
    spec = load_data_spec(yaml_path)
    assert [len(Path(s[0]).read_text().split()) for s in (spec.train, spec.val)] == [7, 3]


def test_roboflow_export_root_trains_on_train_and_validates_on_valid(tmp_path):
    drawn = make_roboflow(tmp_path / "export", {"train": 6, "valid": 3, "test": 2})
    yaml_path = resolve_data_yaml(data_cfg(tmp_path / "export", tmp_path))
    spec = load_data_spec(yaml_path)
    assert spec.names == {0: "short", 1: "missing_hole"}  # category 0, the supercategory, is no class
    for listing, split, n in ((spec.train[0], "train", 6), (spec.val[0], "valid", 3)):
        sources = {source_of(p) for p in Path(listing).read_text().split()}
        assert len(sources) == n and {p.parent.name for p in sources} == {split}  # test/ is not used
    assert_boxes_on_drawn_objects(yaml_path, {k: v for k, v in drawn.items() if k.parent.name != "test"}, tmp_path)
    # One of its JSONs alone: as before, split by data.val_fraction
    one = load_data_spec(resolve_data_yaml(data_cfg(tmp_path / "export" / "train" / "_annotations.coco.json",
                                                    tmp_path, val_fraction=0.5)))
    train, val = (Path(p).read_text().split() for p in (one.train[0], one.val[0]))
    assert len(train) == 3 and len(val) == 3 and one.names == {0: "short", 1: "missing_hole"}


def test_roboflow_export_without_train_says_what_to_do(tmp_path):
    make_roboflow(tmp_path / "export", {"valid": 2})
    with pytest.raises(DataError, match="no train/_annotations.coco.json"):
        resolve_data_yaml(data_cfg(tmp_path / "export", tmp_path))


def test_malformed_coco_names_every_annotation(tmp_path):
    make_coco(tmp_path / "coco", {"train": 3})
    f = tmp_path / "coco" / "annotations" / "instances_train.json"
    d = json.loads(f.read_text())
    d["annotations"][0]["bbox"] = [10, 10, -5, 20]
    d["annotations"][1]["category_id"] = 42
    d["annotations"][2]["image_id"] = 99
    d["annotations"][3]["bbox"] = [120, 10, 30, 20]
    d["images"].append({"id": 50, "file_name": "gone.jpg", "width": 128, "height": 96})
    f.write_text(json.dumps(d))
    with pytest.raises(DataError) as err:
        resolve_data_yaml(data_cfg(f, tmp_path))
    msg = str(err.value)
    assert msg.startswith(str(f)) and "\n" not in msg and "5 malformed" in msg
    for needle in ("annotation 1 (image 'train_00.jpg'): bbox [10, 10, -5, 20] has no area",
                   "annotation 2 (image 'train_01.jpg'): category_id 42", "annotation 3: image_id 99",
                   "annotation 4 (image 'train_02.jpg'): bbox [120, 10, 30, 20] lies outside",
                   "image 50 'gone.jpg': no such file"):
        assert needle in msg, msg


@pytest.mark.slow
def test_pku_layout_trains_two_epochs_on_two_cpu_ranks(tmp_path):
    import csv
    import subprocess
    import sys

    from ultralytics import YOLO

    from tests.conftest import REPO

    make_pku(tmp_path / "PCB_DATASET", per_class=4)
    env = {**os.environ, "YOLO_DDP_OUTPUTS": str(tmp_path / "out"), "CUDA_VISIBLE_DEVICES": "", "YOLO_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "launcher", "+experiment=pcb_defects", "data=pku_pcb",
         "data.path=PCB_DATASET", "train=cpu_quick", "train.epochs=2", "data.imgsz=64",
         "train.batch=4", "data.workers=0", "logger=csv", "launcher.nproc_per_node=2", "data.val_fraction=0.25"],
        capture_output=True, text=True, env={**env, "PYTHONPATH": str(REPO)}, timeout=600,
        cwd=tmp_path)  # as the README writes it: a relative data.path, the default (relative) data.cache_dir
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [run_dir] = [p.parent for p in (tmp_path / "out").rglob("metrics.csv")]
    with (run_dir / "metrics.csv").open() as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2]
    assert json.loads((run_dir / "result.json").read_text())["world_size"] == 2
    assert "(6 train / 2 val images, 2 classes)" in (run_dir / "rank0.log").read_text()
    assert YOLO(str(run_dir / "best.pt")).names == {0: "missing_hole", 1: "short"}
    assert len(list((tmp_path / ".cache/yolo_ddp/converted").iterdir())) == 1  # converted once, by the launcher
