"""Data configs: the data set, its augmentation and loader (`data.*`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from yolo_ddp.config.checks import check

DATA_BACKENDS = ("auto", "dali", "torch")
SYNTHETIC_DATA = "pcb_defects"  # the only data set that needs no files


@dataclass
class SyntheticDataConfig:
    """The embedded PCB-defect set used when `data.path` is empty."""

    n_train: int = 1000
    n_val: int = 200
    image_size: int = 640
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.n_train > 0 and self.n_val > 0, "data.synthetic.n_train/n_val", "must be > 0.")
        check(self.image_size >= 32, "data.synthetic.image_size", "must be >= 32 pixels.")


@dataclass
class DaliConfig:
    """DALI pipeline knobs (data.backend=dali, or auto on a GPU)."""

    threads: int = 0  # DALI CPU threads per rank; 0 = auto (4 on a GPU, allowed CPUs / local ranks on CPU)
    prefetch: int = 2  # batches prepared ahead of the training step
    # processes running the per-sample training source (file reads, augmentation parameters, boxes); 0 = in the
    # training thread; -1 = auto: up to 4 per rank on a GPU (half the rank's share of its allowed CPUs and cgroup
    # quota), 0 on CPU (yolo_ddp/data/dali.py DaliSettings.source_workers). Validation always runs it inline.
    py_workers: int = -1

    def __post_init__(self) -> None:
        check(self.threads >= 0, "data.dali.threads", "must be >= 0 (0 = auto).")
        check(self.prefetch >= 1, "data.dali.prefetch", "must be >= 1.")
        check(self.py_workers >= -1, "data.dali.py_workers", "must be >= 0, or -1 for auto.")


@dataclass
class DataConfig:
    name: str = "pcb_defects"
    # An Ultralytics data.yaml (or a YOLO-format root), a Pascal VOC folder (images + Annotations/**/*.xml, e.g.
    # PKU-Market-PCB) or a COCO instances_*.json. Empty: the built-in synthetic PCB set.
    path: str = ""
    # VOC/COCO sets without their own train/val split: this fraction of each image folder validates, chosen by a
    # shuffle seeded with split_seed (the same split on every node and run).
    val_fraction: float = 0.2
    split_seed: int = 0
    imgsz: int = 640
    backend: str = "auto"
    workers: int = 2  # DataLoader workers per rank
    cache_dir: str = ".cache/yolo_ddp"  # node-local: label index, synthetic data set
    hsv_h: float = 0.015
    hsv_s: float = 0.7
    hsv_v: float = 0.4
    fliplr: float = 0.5
    mosaic: float = 1.0  # 4-image mosaic probability per training sample
    # Ultralytics' RandomPerspective on every training sample (after the mosaic, or alone without one): resized
    # by a random factor in [1 - scale, 1 + scale], centre shifted by up to +-translate of imgsz on each axis.
    scale: float = 0.5
    translate: float = 0.1
    close_mosaic: int = 10  # no mosaic in the last N epochs, as Ultralytics
    # The rest of `yolo train`'s augmentation, with its meaning and defaults (off): RandomPerspective's rotation
    # (+-degrees), shear (+-degrees) and perspective; vertical flip and RGB<->BGR swap probabilities; MixUp and
    # CutMix probabilities (closed with the mosaic). The torch backend runs Ultralytics' own v8_transforms; the
    # DALI pipeline has none of these, so a non-zero value needs data.backend=torch (auto picks it).
    degrees: float = 0.0
    shear: float = 0.0
    perspective: float = 0.0
    flipud: float = 0.0
    bgr: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    # Label selection, as `yolo train`: single_cls trains every class as one ("item"); classes keeps only the
    # listed class ids (train and val); fraction uses the first part of the sorted train images (a ratio, an image
    # count > 1, or [train, val, test] values).
    single_cls: bool = False
    classes: Any = None
    fraction: Any = 1.0
    # uniform: every image once per epoch (shuffled). balanced: each epoch draws as many images, with replacement,
    # weighted by their classes' inverse frequency (YOLOv5's image weights), the same draw on every rank; the
    # epoch's boxes per class go to metrics.csv and W&B as seen_<class>. Torch backend only.
    sampler: str = "uniform"
    # `yolo train cache=`: ram (or true) / disk / false. Each image decoded and resized (long side imgsz) once per
    # node into one store every rank and loader worker memory-maps: ram on /dev/shm, disk under cache_dir/images.
    # Reused while the files and imgsz match; refused up front when it cannot fit (yolo_ddp/data/image_cache.py).
    cache: Any = False
    # Tiled training for small objects on large images (yolo_ddp/data/tiles): each training image larger than
    # `tile` source pixels becomes overlapping tile x tile windows (0: off), starting every tile x (1 - overlap)
    # pixels; a box is kept in a window when at least tile_min_visible of its area lies inside. Torch backend only.
    tile: int = 0
    tile_overlap: float = 0.2
    tile_min_visible: float = 0.5
    # Validate as Ultralytics' validator: batches of images sorted by aspect ratio, each letterboxed to its own
    # rectangle (multiple of 32, pad 0.5). false: every image letterboxed to imgsz x imgsz (cheaper to pad, but
    # mAP then differs from `yolo val`).
    val_rect: bool = True
    dali: DaliConfig = field(default_factory=DaliConfig)
    synthetic: SyntheticDataConfig = field(default_factory=SyntheticDataConfig)

    def __post_init__(self) -> None:
        check(self.imgsz >= 32 and self.imgsz % 32 == 0, "data.imgsz",
               f"got {self.imgsz}; use a multiple of the model stride 32 (e.g. 320, 640).")
        check(self.sampler in ("uniform", "balanced"), "data.sampler",
              f"got '{self.sampler}'; choose uniform or balanced.")
        check(self.backend in DATA_BACKENDS, "data.backend", f"got '{self.backend}'; choose one of {DATA_BACKENDS}.")
        check(self.workers >= 0, "data.workers", "must be >= 0.")
        check(self.tile == 0 or self.tile >= 32, "data.tile",
              f"got {self.tile}; a tile side in source pixels >= 32 (e.g. 640), or 0 for whole images.")
        check(0.0 <= self.tile_overlap < 1.0, "data.tile_overlap",
              f"got {self.tile_overlap}; a fraction of the tile in [0, 1), e.g. 0.2.")
        check(0.0 < self.tile_min_visible <= 1.0, "data.tile_min_visible",
              f"got {self.tile_min_visible}; the share of a box's area a window must hold, in (0, 1], e.g. 0.5.")
        check(bool(self.path) or self.name == SYNTHETIC_DATA, "data.path",
               f"data '{self.name}' has no data set on disk: pass data.path=path/to/data.yaml (an Ultralytics "
               f"data.yaml), a VOC folder or a COCO instances_*.json, or use data=pcb_defects for the built-in "
               f"synthetic set.")
        check(0.0 < self.val_fraction < 1.0, "data.val_fraction", "must be in (0, 1), e.g. 0.2.")
        check(self.close_mosaic >= 0, "data.close_mosaic", "must be >= 0 epochs.")
        check(0.0 <= self.scale < 1.0, "data.scale", "must be in [0, 1).")
        check(0.0 <= self.translate <= 1.0, "data.translate", "is a fraction of imgsz and must be in [0, 1].")
        for key in ("hsv_h", "hsv_s", "hsv_v", "fliplr", "mosaic", "flipud", "bgr", "mixup", "cutmix"):
            check(0.0 <= getattr(self, key) <= 1.0, f"data.{key}", "must be in [0, 1].")
        check(0.0 <= self.degrees <= 180.0, "data.degrees", "is a rotation range in degrees and must be in [0, 180].")
        check(0.0 <= self.shear <= 90.0, "data.shear", "is a shear range in degrees and must be in [0, 90].")
        check(0.0 <= self.perspective <= 0.001, "data.perspective", "must be in [0, 0.001] (Ultralytics' range).")
        classes = self.classes
        check(classes is None or (isinstance(classes, (list, tuple)) and len(classes) > 0
                                   and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in classes))
               or (isinstance(classes, int) and not isinstance(classes, bool) and classes >= 0), "data.classes",
               f"got {classes!r}; give class ids to keep, e.g. data.classes=[0,2], or leave it null for all.")
        check(_fraction_ok(self.fraction), "data.fraction",
               f"got {self.fraction!r}; use a ratio in (0, 1], an image count > 1, or [train, val, test] values, "
               "as `yolo train fraction=`.")
        check(cache_mode(self.cache) is not None, "data.cache",
              f"got {self.cache!r}; use ram (or true), disk or false, as `yolo train cache=`.")
        self.cache = cache_mode(self.cache) or False  # normalised: "ram", "disk" or False


def cache_mode(value: Any) -> str | None:
    """`yolo train cache=` values → "ram", "disk" or "" (off), True meaning RAM as in Ultralytics; None: invalid."""
    text = str(value).strip().lower()
    if text in ("ram", "true", "disk"):
        return "disk" if text == "disk" else "ram"
    return "" if text in ("false", "", "none", "null") else None


def _fraction_ok(fraction: Any) -> bool:
    def one(v: Any, allow_zero: bool) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        return v > 0 or (allow_zero and v == 0)

    if isinstance(fraction, (list, tuple)):
        return 1 <= len(fraction) <= 3 and all(one(v, allow_zero=i == 2) for i, v in enumerate(fraction))
    return one(fraction, allow_zero=False) and (isinstance(fraction, int) or fraction <= 1.0)
