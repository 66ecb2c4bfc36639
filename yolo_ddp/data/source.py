"""Where the data comes from: the user's data.yaml, or the built-in synthetic PCB set."""

from __future__ import annotations

from pathlib import Path

from yolo_ddp.config import DataConfig
from yolo_ddp.data.foreign.convert import convert_once, detect
from yolo_ddp.data.spec import DataError
from yolo_ddp.dist import local_rank_zero_first


def resolve_data_yaml(data: DataConfig) -> Path:
    """The data.yaml to train on. The synthetic set, and a VOC or COCO set's YOLO conversion, are written once per
    node (local rank 0)."""
    if data.path:
        path = Path(data.path).expanduser()
        if not path.exists():
            raise DataError(
                f"Config key 'data.path': {path} does not exist. Pass data.path=path/to/data.yaml (an Ultralytics "
                f"data.yaml with train, val and names), a YOLO-format root dir, a Pascal VOC folder (images and "
                f"Annotations/**/*.xml), a COCO instances_*.json or a COCO export's root (train/_annotations.coco.json, "
                f"valid/...), or leave data.path empty to use "
                f"the built-in synthetic pcb_defects set."
            )
        kind = detect(path)
        if kind is None:
            return path
        return convert_once(path, kind, Path(data.cache_dir), data.val_fraction, data.split_seed)
    from yolo_ddp.data.synthetic import materialize

    s = data.synthetic
    root = Path(data.cache_dir).expanduser() / "synthetic" / f"{data.name}-{s.n_train}-{s.n_val}-{s.image_size}-{s.seed}"
    with local_rank_zero_first() as leader:
        if leader:
            materialize(root, n_train=s.n_train, n_val=s.n_val, img_size=s.image_size, seed=s.seed)
    return root / "data.yaml"
