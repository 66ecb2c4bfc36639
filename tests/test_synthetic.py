"""The synthetic PCB set: valid YOLO labels, deterministic bytes, and a build that is atomic and cached."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from yolo_ddp.data import synthetic
from yolo_ddp.data.synthetic import CLASS_NAMES, materialize

N_TRAIN, N_VAL, SIZE = 100, 20, 320


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 100-image build shared by the read-only checks, so the module stays fast."""
    return materialize(tmp_path_factory.mktemp("syn") / "pcb", N_TRAIN, N_VAL, img_size=SIZE).parent


def _labels(root: Path) -> dict[Path, np.ndarray]:
    """Label rows per file as an (n, 5) array; empty files (background images) give (0, 5)."""
    paths = sorted((root / "labels").rglob("*.txt"))
    return {p: np.array([r.split() for r in p.read_text().splitlines()], float).reshape(-1, 5) for p in paths}


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_counts_and_pairing(built: Path) -> None:
    for split, n in (("train", N_TRAIN), ("val", N_VAL)):
        images = sorted(p.stem for p in (built / "images" / split).glob("*.jpg"))
        labels = sorted(p.stem for p in (built / "labels" / split).glob("*.txt"))
        assert len(images) == n and images == labels


def test_images_decode_at_size(built: Path) -> None:
    for p in sorted((built / "images" / "val").glob("*.jpg")):
        img = cv2.imread(str(p))
        assert img is not None and img.shape == (SIZE, SIZE, 3)


def test_label_rows_are_valid_and_inside_the_image(built: Path) -> None:
    for path in sorted((built / "labels").rglob("*.txt")):
        for line in path.read_text().splitlines():
            cols = line.split()
            assert len(cols) == 5 and all(len(c.split(".")[1]) == 6 for c in cols[1:]), line
            cls, (cx, cy, w, h) = int(cols[0]), map(float, cols[1:])
            assert 0 <= cls < len(CLASS_NAMES)
            assert all(0 <= v <= 1 for v in (cx, cy, w, h)) and w > 0 and h > 0
            assert min(cx - w / 2, cy - h / 2) >= -1e-6 and max(cx + w / 2, cy + h / 2) <= 1 + 1e-6


def test_boxes_are_learnably_large_and_disjoint(built: Path) -> None:
    for path, rows in _labels(built).items():
        assert len(rows) <= 4, path
        assert np.all((rows[:, 3:] >= 0.119) & (rows[:, 3:] <= 0.31)), path
        xyxy = np.concatenate([rows[:, 1:3] - rows[:, 3:] / 2, rows[:, 1:3] + rows[:, 3:] / 2], axis=1)
        for i in range(len(xyxy)):
            for j in range(i + 1, len(xyxy)):
                overlap = np.minimum(xyxy[i, 2:], xyxy[j, 2:]) - np.maximum(xyxy[i, :2], xyxy[j, :2])
                assert np.any(overlap <= 0), path


def test_every_class_appears_and_some_images_are_background(built: Path) -> None:
    labels = _labels(built)
    seen = {int(c) for rows in labels.values() for c in rows[:, 0]}
    assert seen == set(range(len(CLASS_NAMES)))
    empty = sum(len(rows) == 0 for rows in labels.values())
    assert 0 < empty < 0.25 * len(labels)


def test_data_yaml(built: Path) -> None:
    data = yaml.safe_load((built / "data.yaml").read_text())
    assert data["path"] == str(built.resolve())
    assert (data["train"], data["val"]) == ("images/train", "images/val")
    assert data["names"] == dict(enumerate(CLASS_NAMES)) and len(data["names"]) == 6


def test_train_and_val_images_differ(built: Path) -> None:
    assert (built / "images/train/000000.jpg").read_bytes() != (built / "images/val/000000.jpg").read_bytes()


def test_same_arguments_give_identical_bytes(tmp_path: Path) -> None:
    a, b = (materialize(tmp_path / name, 6, 3, img_size=160, seed=7).parent for name in ("a", "b"))
    snap_a, snap_b = _snapshot(a), _snapshot(b)
    yaml_a, yaml_b = (yaml.safe_load(s.pop("data.yaml")) for s in (snap_a, snap_b))
    assert snap_a == snap_b and len(snap_a) == 2 * (6 + 3) + 1  # images, labels and the marker
    assert {**yaml_a, "path": ""} == {**yaml_b, "path": ""}


def test_second_call_is_a_no_op(tmp_path: Path) -> None:
    first = materialize(tmp_path / "pcb", 4, 2, img_size=128)
    before = {p: p.stat().st_mtime_ns for p in [first.parent, *first.parent.rglob("*")]}
    assert materialize(tmp_path / "pcb", 4, 2, img_size=128) == first
    assert {p: p.stat().st_mtime_ns for p in [first.parent, *first.parent.rglob("*")]} == before


def test_changed_parameters_rebuild(tmp_path: Path) -> None:
    root = tmp_path / "pcb"
    materialize(root, 4, 2, img_size=128)
    old_image = (root / "images/train/000000.jpg").read_bytes()
    materialize(root, 5, 2, img_size=128)
    assert len(list((root / "images/train").glob("*.jpg"))) == 5
    materialize(root, 5, 2, img_size=128, seed=1)
    assert (root / "images/train/000000.jpg").read_bytes() != old_image
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pcb"]  # no temporary siblings left behind


def test_interrupted_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = synthetic._write_split

    def crash_on_val(root: Path, split: str, *args: int) -> None:
        if split == "val":
            raise KeyboardInterrupt
        real(root, split, *args)

    monkeypatch.setattr(synthetic, "_write_split", crash_on_val)
    with pytest.raises(KeyboardInterrupt):
        materialize(tmp_path / "pcb", 3, 2, img_size=128)
    assert list(tmp_path.iterdir()) == []


def test_stale_incomplete_root_is_replaced(tmp_path: Path) -> None:
    root = tmp_path / "pcb"
    (root / "images" / "train").mkdir(parents=True)
    (root / "images" / "train" / "leftover.jpg").write_bytes(b"half written")
    materialize(root, 3, 2, img_size=128)
    assert not (root / "images" / "train" / "leftover.jpg").exists()
    assert len(list((root / "images/train").glob("*.jpg"))) == 3


def test_refuses_to_replace_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        materialize(tmp_path, 3, 2, img_size=128)
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("args", [(0, 2, 128, 0), (3, 0, 128, 0), (3, 2, 16, 0), (3, 2, 128, -1)])
def test_rejects_bad_arguments(tmp_path: Path, args: tuple[int, int, int, int]) -> None:
    with pytest.raises(ValueError):
        materialize(tmp_path / "pcb", *args)
