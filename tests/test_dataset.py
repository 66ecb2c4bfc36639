"""data.yaml parsing, label validation, corrupt-image skipping and the node-shared index cache."""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

from yolo_ddp.data import dataset as dataset_mod
from yolo_ddp.data.dataset import build_index
from yolo_ddp.data.spec import DataError, load_data_spec


def write_image(path: Path, h: int = 40, w: int = 60) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((h, w, 3), (0, 0, 255), np.uint8))
    return path


def write_label(img: Path, text: str) -> Path:
    lb = Path(str(img).replace(f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}")).with_suffix(".txt")
    lb.parent.mkdir(parents=True, exist_ok=True)
    lb.write_text(text)
    return lb


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A YOLO root: two train images (one labelled), one val image, no data.yaml yet."""
    ds = tmp_path / "ds"
    write_label(write_image(ds / "images/train/a.jpg"), "0 0.5 0.5 0.2 0.2\n")
    write_image(ds / "images/train/b.png", h=30, w=50)
    write_image(ds / "images/val/c.jpg")
    return ds


def write_yaml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def index(src: Path, tmp_path: Path, nc: int = 2, split: str = "train") -> dataset_mod.DatasetIndex:
    return build_index([src], nc=nc, cache_dir=tmp_path / "cache", split=split)


# --- data.yaml ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("names", ["[a, b]", "{0: a, 1: b}", "{'1': b, '0': a}"])
def test_names_list_or_dict(root: Path, names: str) -> None:
    spec = load_data_spec(
        write_yaml(root / "data.yaml", f"train: images/train\nval: images/val\nnames: {names}\n")
    )
    assert spec.names == {0: "a", 1: "b"} and spec.nc == 2
    assert spec.root == root and spec.train == [root / "images/train"] and spec.val == [root / "images/val"]


def test_relative_path_resolves_against_yaml_dir(root: Path, tmp_path: Path) -> None:
    y = write_yaml(
        tmp_path / "cfg/data.yaml", "path: ../ds\ntrain: images/train\nval: [images/val]\nnames: [a]\n"
    )
    spec = load_data_spec(y)
    assert spec.root == root and spec.train == [root / "images/train"] and spec.yaml_path == y


def test_relative_path_then_cwd_then_ultralytics_datasets_dir(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # `yolo train` resolves a relative 'path' against the working directory, then its datasets_dir.
    import ultralytics.utils

    y = write_yaml(tmp_path / "cfg/data.yaml", "path: ds\ntrain: images/train\nval: images/val\nnames: [a]\n")
    monkeypatch.setattr(ultralytics.utils, "DATASETS_DIR", tmp_path / "datasets")
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO, logger="yolo_ddp.data.spec"):
        assert load_data_spec(y).root == root
    assert any("the working directory" in r.getMessage() for r in caplog.records)
    monkeypatch.chdir(tmp_path / "cfg")
    (tmp_path / "datasets").mkdir()
    (tmp_path / "ds").rename(tmp_path / "datasets/ds")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="yolo_ddp.data.spec"):
        assert load_data_spec(y).root == tmp_path / "datasets/ds"
    assert any("Ultralytics' datasets_dir" in r.getMessage() for r in caplog.records)
    (tmp_path / "cfg/ds").mkdir()  # the yaml's folder comes first
    assert load_data_spec(write_yaml(y, "path: ds\ntrain: .\nval: .\nnames: [a]\n")).root == tmp_path / "cfg/ds"


def test_missing_path_lists_every_place_tried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ultralytics.utils

    monkeypatch.setattr(ultralytics.utils, "DATASETS_DIR", tmp_path / "datasets")
    monkeypatch.chdir(tmp_path)
    y = write_yaml(tmp_path / "cfg/data.yaml", "path: nowhere\ntrain: a\nval: b\nnames: [a]\n")
    with pytest.raises(DataError) as err:
        load_data_spec(y)
    for place in (tmp_path / "cfg/nowhere", tmp_path / "nowhere", tmp_path / "datasets/nowhere"):
        assert str(place) in str(err.value)
    assert "\n" not in str(err.value)


def test_directory_uses_its_data_yaml(root: Path) -> None:
    write_yaml(root / "data.yaml", "train: images/train\nval: images/val\nnames: [a]\n")
    assert load_data_spec(root).names == {0: "a"}


def test_directory_without_yaml_asks_for_names(root: Path) -> None:
    with pytest.raises(DataError, match="names"):
        load_data_spec(root)


def test_txt_list(root: Path, tmp_path: Path) -> None:
    (root / "train.txt").write_text("./images/train/a.jpg\nimages/train/b.png\n\n")
    spec = load_data_spec(
        write_yaml(root / "data.yaml", "train: train.txt\nval: images/val\nnames: [a, b]\n")
    )
    idx = index(spec.train[0], tmp_path)
    assert idx.im_files == [str(root / "images/train/a.jpg"), str(root / "images/train/b.png")]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("train: images/train\nval: images/val\n", "'names'"),
        ("train: images/train\nnames: [a]\n", "'val'"),
        ("val: images/val\nnames: [a]\n", "'train'"),
        ("train: images/train\nval: images/val\nnames: []\n", "'names'"),
        ("train: images/nope\nval: images/val\nnames: [a]\n", "'train'"),
        ("train: images/train\nval: images/val\nnames: [a, b]\nnc: 3\n", "'nc'"),
        ("- just\n- a list\n", "mapping"),
        ("train: [unclosed\n", "not valid YAML"),
        ("train: images/train\nval: images/val\nnames: {0: a, 2: c}\n", "without gaps"),
    ],
)
def test_bad_yaml_names_file_and_key(root: Path, text: str, needle: str) -> None:
    y = write_yaml(root / "data.yaml", text)
    with pytest.raises(DataError, match=needle) as err:
        load_data_spec(y)
    assert str(y) in str(err.value) and "\n" not in str(err.value)


def test_missing_yaml(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_data_spec(tmp_path / "nope.yaml")


# --- labels and images -------------------------------------------------------------------------------


def test_background_images_and_shapes(root: Path, tmp_path: Path) -> None:
    write_label(root / "images/train/b.png", "\n")  # empty file; a.jpg is labelled, c.jpg has no file
    idx = index(root / "images/train", tmp_path)
    assert len(idx) == 2 and idx.shapes.tolist() == [[40, 60], [30, 50]]
    assert np.allclose(idx.labels_for(0), [[0, 0.5, 0.5, 0.2, 0.2]]) and idx.labels_for(1).shape == (0, 5)
    assert idx.labels.dtype == np.float32 and idx.offsets.tolist() == [0, 1, 1]
    assert index(root / "images/val", tmp_path, split="val").labels.shape == (0, 5)


@pytest.mark.parametrize(
    ("row", "needle"),
    [
        ("0 0.5 0.5 0.2", "expected 5 numbers, found 4"),
        ("0 0.5 0.5 0.2 0.2 0.9", "expected 5 numbers, found 6"),
        ("0 0.1 0.1 0.9 0.1 0.9 0.9 0.1", "expected 5 numbers, found 8"),
        ("0 0.1 0.1 0.9 0.1 0.9 0.9 0.1 0.9", "mixes box rows"),
        ("2 0.5 0.5 0.2 0.2", "class id 2"),
        ("-1 0.5 0.5 0.2 0.2", "class id -1"),
        ("0.5 0.5 0.5 0.2 0.2", "class id"),
        ("0 50 50 20 20", "not normalized"),
        ("0 1.2 0.5 0.2 0.2", "not normalized"),
        ("0 0.5 -0.3 0.2 0.2", "not normalized"),
        ("0 0.5 0.5 0 0.2", "must be > 0"),
        ("0 0.5 0.5 0.2 -0.1", "must be > 0"),
        ("0 0.5 x 0.2 0.2", "non-number"),
    ],
)
def test_bad_label_row_names_file_and_line(root: Path, tmp_path: Path, row: str, needle: str) -> None:
    lb = write_label(root / "images/train/a.jpg", f"1 0.1 0.1 0.1 0.1\n{row}\n")
    with pytest.raises(DataError, match=needle) as err:
        index(root / "images/train", tmp_path)
    assert f"{lb}:2" in str(err.value)


def test_polygons_train_as_their_boxes_and_are_counted_once(
    root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Ultralytics' YOLODataset trains detection on segmentation labels by taking each polygon's box.
    write_label(root / "images/train/a.jpg", "1 0.1 0.2 0.5 0.2 0.5 0.6 0.1 0.6\n0 0.3 0.3 0.9 0.35 0.6 0.8\n")
    write_label(root / "images/train/b.png", "0 0 0 1 0 1 1\n")
    with caplog.at_level(logging.INFO, logger=dataset_mod.__name__):
        idx = index(root / "images/train", tmp_path)
    assert idx.polygons_converted == 3
    np.testing.assert_allclose(idx.labels_for(0), [[1, 0.3, 0.4, 0.4, 0.4], [0, 0.6, 0.55, 0.6, 0.5]], atol=1e-6)
    np.testing.assert_allclose(idx.labels_for(1), [[0, 0.5, 0.5, 1, 1]], atol=1e-6)
    said = [r.getMessage() for r in caplog.records if "polygon" in r.getMessage()]
    assert len(said) == 1 and "3 segmentation polygon row(s) converted" in said[0]
    assert index(root / "images/train", tmp_path).polygons_converted == 3  # from the cache, too


def test_bad_label_row_in_a_val_file_fails_too(root: Path, tmp_path: Path) -> None:
    lb = write_label(root / "images/val/c.jpg", "0 0.5 0.5 0.2 0.2 1\n")
    with pytest.raises(DataError, match="expected 5 numbers") as err:
        index(root / "images/val", tmp_path, split="val")
    assert f"{lb}:1" in str(err.value) and "\n" not in str(err.value)


def test_duplicates_removed_counted_and_reported(
    root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_label(root / "images/train/a.jpg", "0 0.5 0.5 0.2 0.2\n1 0.3 0.3 0.1 0.1\n0 0.50 0.5 0.2 0.20\n")
    with caplog.at_level(logging.WARNING, logger=dataset_mod.__name__):
        idx = index(root / "images/train", tmp_path)
    assert idx.duplicates_removed == 1
    assert idx.labels_for(0)[:, 0].tolist() == [0, 1]
    assert any("removed 1 duplicate label row" in r.getMessage() for r in caplog.records)


def test_non_image_files_are_ignored_and_reported(
    root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    train = root / "images/train"
    (train / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")  # a label beside its image instead of in labels/
    (train / "notes.pdf").write_bytes(b"%PDF-1.4")
    (train / ".DS_Store").write_bytes(b"\0")  # hidden OS files are not worth a warning
    (root / "list.txt").write_text("images/train/a.jpg\nimages/train/notes.pdf\n")
    with caplog.at_level(logging.WARNING, logger=dataset_mod.__name__):
        idx = index(train, tmp_path)
        listed = index(root / "list.txt", tmp_path, split="listed")
    assert [Path(f).name for f in idx.im_files] == ["a.jpg", "b.png"] and idx.skipped == []
    assert [Path(f).name for f in listed.im_files] == ["a.jpg"]
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == 2 and "ignored 2 file(s) that are not images" in messages[0]
    assert str(train / "a.txt") in messages[0] and ".DS_Store" not in messages[0]
    assert f"{root / 'list.txt'}:2" in messages[1]


def test_corrupt_images_skipped_and_listed(
    root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    train = root / "images/train"
    (train / "random.jpg").write_bytes(np.random.default_rng(0).integers(0, 256, 500, np.uint8).tobytes())
    ok, buf = cv2.imencode(".jpg", np.random.default_rng(1).integers(0, 256, (64, 64, 3), np.uint8))
    (train / "truncated.jpg").write_bytes(buf.tobytes()[: len(buf) // 2])
    (train / "trailing.jpg").write_bytes(buf.tobytes() + b"extra")  # valid: data after the end marker
    write_label(train / "random.jpg", "5 9 9 9")  # never parsed: the image is skipped first
    with caplog.at_level(logging.WARNING, logger=dataset_mod.__name__):
        idx = index(train, tmp_path)
    assert [Path(f).name for f in idx.im_files] == ["a.jpg", "b.png", "trailing.jpg"]
    assert [s.split(":")[0] for s in idx.skipped] == [str(train / "random.jpg"), str(train / "truncated.jpg")]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 2" in warnings[0].getMessage()


# --- cache ---------------------------------------------------------------------------------------------


def test_cache_reused_as_memmaps_and_invalidated(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = index(root / "images/train", tmp_path)
    calls: list[str] = []

    def refuse(f: str) -> tuple[tuple[int, int] | None, str]:
        calls.append(f)
        raise AssertionError("cached index must not re-verify images")

    monkeypatch.setattr(dataset_mod, "_verify_image", refuse)
    second = index(root / "images/train", tmp_path)
    assert second.im_files == first.im_files and not calls
    assert all(isinstance(a, np.memmap) for a in (second.shapes, second.labels, second.offsets))
    assert np.array_equal(second.labels, first.labels)

    restored = pickle.loads(pickle.dumps(second))  # spawned workers reopen the files, not copies
    assert isinstance(restored.labels, np.memmap) and np.array_equal(restored.labels, first.labels)

    write_label(root / "images/train/a.jpg", "1 0.5 0.5 0.2 0.2\n0 0.1 0.1 0.1 0.1\n")
    with pytest.raises(AssertionError, match="must not re-verify"):
        index(root / "images/train", tmp_path)
    monkeypatch.undo()
    third = index(root / "images/train", tmp_path)
    assert third.labels_for(0)[:, 0].tolist() == [1, 0]
    assert len(list((tmp_path / "cache").glob("train-*"))) == 2  # no temp dirs left behind
