"""Typed run configuration: one dataclass per concern.

These are plain dataclasses so the library never needs Hydra; `launcher/store.py` registers them in
Hydra's ConfigStore, which makes a typo'd key or a wrong type fail at compose time. `__post_init__`
checks what a type cannot (ranges, choices) and raises `ValueError` naming the key and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

AMP_MODES = ("auto", "bf16", "fp16", "off")
OPTIMIZERS = ("auto", "SGD", "MuSGD", "Adam", "Adamax", "AdamW", "NAdam", "RAdam", "RMSProp")  # `yolo train`'s
LOSS_NORMS = ("global", "per_batch")
DATA_BACKENDS = ("auto", "dali", "torch")
SYNTHETIC_DATA = "pcb_defects"  # the only data set that needs no files


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ValueError(f"Config key '{key}': {message}")


@dataclass
class SyntheticDataConfig:
    """The embedded PCB-defect set used when `data.path` is empty."""

    n_train: int = 1000
    n_val: int = 200
    image_size: int = 640
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.n_train > 0 and self.n_val > 0, "data.synthetic.n_train/n_val", "must be > 0.")
        _check(self.image_size >= 32, "data.synthetic.image_size", "must be >= 32 pixels.")


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
        _check(self.threads >= 0, "data.dali.threads", "must be >= 0 (0 = auto).")
        _check(self.prefetch >= 1, "data.dali.prefetch", "must be >= 1.")
        _check(self.py_workers >= -1, "data.dali.py_workers", "must be >= 0, or -1 for auto.")


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
    # `yolo train cache=`: ram/disk/true land with the node-shared image cache (issue 24); refused until then.
    cache: Any = False
    # Validate as Ultralytics' validator: batches of images sorted by aspect ratio, each letterboxed to its own
    # rectangle (multiple of 32, pad 0.5). false: every image letterboxed to imgsz x imgsz (cheaper to pad, but
    # mAP then differs from `yolo val`).
    val_rect: bool = True
    dali: DaliConfig = field(default_factory=DaliConfig)
    synthetic: SyntheticDataConfig = field(default_factory=SyntheticDataConfig)

    def __post_init__(self) -> None:
        _check(self.imgsz >= 32 and self.imgsz % 32 == 0, "data.imgsz",
               f"got {self.imgsz}; use a multiple of the model stride 32 (e.g. 320, 640).")
        _check(self.backend in DATA_BACKENDS, "data.backend", f"got '{self.backend}'; choose one of {DATA_BACKENDS}.")
        _check(self.workers >= 0, "data.workers", "must be >= 0.")
        _check(bool(self.path) or self.name == SYNTHETIC_DATA, "data.path",
               f"data '{self.name}' has no data set on disk: pass data.path=path/to/data.yaml (an Ultralytics "
               f"data.yaml), a VOC folder or a COCO instances_*.json, or use data=pcb_defects for the built-in "
               f"synthetic set.")
        _check(0.0 < self.val_fraction < 1.0, "data.val_fraction", "must be in (0, 1), e.g. 0.2.")
        _check(self.close_mosaic >= 0, "data.close_mosaic", "must be >= 0 epochs.")
        _check(0.0 <= self.scale < 1.0, "data.scale", "must be in [0, 1).")
        _check(0.0 <= self.translate <= 1.0, "data.translate", "is a fraction of imgsz and must be in [0, 1].")
        for key in ("hsv_h", "hsv_s", "hsv_v", "fliplr", "mosaic", "flipud", "bgr", "mixup", "cutmix"):
            _check(0.0 <= getattr(self, key) <= 1.0, f"data.{key}", "must be in [0, 1].")
        _check(0.0 <= self.degrees <= 180.0, "data.degrees", "is a rotation range in degrees and must be in [0, 180].")
        _check(0.0 <= self.shear <= 90.0, "data.shear", "is a shear range in degrees and must be in [0, 90].")
        _check(0.0 <= self.perspective <= 0.001, "data.perspective", "must be in [0, 0.001] (Ultralytics' range).")
        classes = self.classes
        _check(classes is None or (isinstance(classes, (list, tuple)) and len(classes) > 0
                                   and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in classes))
               or (isinstance(classes, int) and not isinstance(classes, bool) and classes >= 0), "data.classes",
               f"got {classes!r}; give class ids to keep, e.g. data.classes=[0,2], or leave it null for all.")
        _check(_fraction_ok(self.fraction), "data.fraction",
               f"got {self.fraction!r}; use a ratio in (0, 1], an image count > 1, or [train, val, test] values, "
               "as `yolo train fraction=`.")
        _check(self.cache in (False, None, "false", "False", ""), "data.cache",
               f"got {self.cache!r}. `yolo train cache=ram|disk` keeps one copy per rank; yolo-ddp's replacement, one "
               "node-shared image cache, is not built yet (issue 24 \"Data at GPU speed without DALI\"). Remove "
               "data.cache (or set it false); the label index under data.cache_dir is cached already.")


def _fraction_ok(fraction: Any) -> bool:
    def one(v: Any, allow_zero: bool) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        return v > 0 or (allow_zero and v == 0)

    if isinstance(fraction, (list, tuple)):
        return 1 <= len(fraction) <= 3 and all(one(v, allow_zero=i == 2) for i, v in enumerate(fraction))
    return one(fraction, allow_zero=False) and (isinstance(fraction, int) or fraction <= 1.0)


@dataclass
class ModelConfig:
    # An Ultralytics model yaml name (yolov8n.yaml, yolo11s.yaml, ...) or a path to one.
    cfg: str = "yolov8n.yaml"
    # Optional local .pt to initialise from (never downloaded).
    weights: str = ""
    # `yolo train cls_remap`: when the .pt was trained on other classes, copy its class-head rows to ours by class
    # name (case-insensitive); false: only layers whose shapes match load, as before Ultralytics 8.4.
    cls_remap: bool = True

    def __post_init__(self) -> None:
        _check(self.cfg.endswith((".yaml", ".yml")), "model.cfg",
               f"got '{self.cfg}'; name a model yaml such as yolov8n.yaml (weights go in model.weights).")


@dataclass
class TrainConfig:
    epochs: int = 100
    # Global batch, split evenly over all ranks as `yolo train batch=` is; or "auto": the largest per-rank
    # micro-batch the memory planner finds room for (accumulation then keeps the nominal batch).
    batch: Any = 64
    nbs: int = 64  # nominal batch: gradients accumulate until ~nbs images, whatever the world size
    optimizer: str = "auto"
    lr0: float = 0.01
    lrf: float = 0.01
    momentum: float = 0.937
    weight_decay: float = 5e-4
    warmup_epochs: float = 3.0
    warmup_momentum: float = 0.8
    warmup_bias_lr: float = 0.1
    cos_lr: bool = False
    # global: one loss normaliser per optimizer step, so ranks x micro-batches train what one forward on the
    # step's images would (yolo_ddp/engine/loss_norm.py); per_batch: Ultralytics' normaliser per forward.
    loss_norm: str = "global"
    amp: str = "auto"
    # auto: SyncBatchNorm when world > 1 and the per-rank batch is below the device's threshold. GPUs: below 8,
    # where per-rank BN breaks (2-4 images); from 8 up each rank keeps its own BN, as `yolo train` does, so no
    # GPU run pays a collective per BN layer that Ultralytics' does not (docs/scaling.md). CPU (gloo): below 16,
    # measured: 2 ranks x 8 synced beat per-rank BN on 3 paired seeds (bench/RESULTS.md).
    sync_bn: str = "auto"
    sync_bn_below: int = 8  # GPUs
    sync_bn_below_cpu: int = 16
    # Which SyncBatchNorm on GPUs: torch (nn.SyncBatchNorm: an all-gather and a host sync per layer per forward)
    # or collective (ours: one all-reduce of the moments, no host sync; always used on CPU, where torch's has
    # no kernels). Same outputs and gradients (tests/test_sync_bn.py); bench/sync_bn.py times both.
    sync_bn_impl: str = "torch"
    ema: bool = True
    grad_clip: float = 10.0
    seed: int = 0
    # true: continue the run dir's last.pt; a path (a last.pt or a run dir): continue that run in its own dir.
    resume: Any = False
    val_every: int = 1
    # Ultralytics' `patience`: stop after this many epochs without a better validation fitness (its EarlyStopping;
    # 0 = never). `freeze`: the first N layers (an int) or these layer indices (a list) do not train; .dfl never
    # does. `save_period`: also keep last.pt as epoch<N>.pt every N epochs (< 1: off).
    patience: int = 100
    freeze: Any = None
    save_period: int = -1
    # Ultralytics' `time`: hours of training that override epochs. After each epoch the run re-estimates its epochs
    # from the mean epoch time (LR schedule, close_mosaic and the last validation follow), and it ends, validated
    # and saved, at the first optimizer step past the budget. null: train.epochs.
    time: Any = None
    # Ultralytics' `deterministic`: deterministic algorithms where torch has them (warn_only), cuDNN deterministic
    # and benchmark off (overrides train.cudnn_benchmark), CUBLAS_WORKSPACE_CONFIG set. false: fastest kernels.
    deterministic: bool = True
    # Ultralytics' `cls_pw`: classification loss weights from inverse class frequency in the train labels, raised
    # to this power (0: off, 1: full inverse frequency), normalised to mean 1.
    cls_pw: float = 0.0
    conf: float = 0.001  # validation NMS thresholds (Ultralytics' defaults)
    iou: float = 0.7
    max_det: int = 300
    box: float = 7.5  # loss gains (Ultralytics' defaults)
    cls: float = 0.5
    dfl: float = 1.5
    threads_per_rank: int = 0  # torch intra-op threads on CPU; 0 = usable CPUs (affinity, cgroup quota) / local ranks
    memory_fraction: float = 0.9  # share of a rank's free device memory the planner may use
    # What the planner may change, in this order, when the run does not fit: amp, batch, imgsz, model.
    allow_downgrade: list[str] = field(default_factory=lambda: ["amp", "batch"])
    oom_retries: int = 3  # times a mid-run OOM may halve the micro-batch before the run fails
    # Times `python -m launcher` starts the job again, from last.pt at half the micro-batch, after an OOM no rank
    # could retry in place (inside SyncBatchNorm or the gradient all-reduce; yolo_ddp/memory/oom.py).
    oom_restarts: int = 3
    # Also write last.pt inside an epoch once this long has passed since the last checkpoint (0: off), so a crash
    # or an OOM restart redoes at most that much training; and every N optimizer steps (0: off).
    save_every_s: float = 120.0
    save_every_steps: int = 0
    # Random imgsz per optimizer step: [low, high] factors (e.g. [0.5, 1.5]), or `yolo train`'s float f, which is
    # [1 - f, 1 + f]; [] or 0: off.
    multi_scale: Any = field(default_factory=list)
    # Progressive resize: [[first epoch, imgsz], ...], e.g. [[0, 320], [10, 640]]; empty = data.imgsz throughout.
    imgsz_schedule: list[list[int]] = field(default_factory=list)
    # Speed switches (yolo_ddp/engine/speed.py says what each does; bench/RESULTS.md what each measured).
    channels_last: bool = True
    fused_optimizer: bool = True
    compile: bool = False  # torch.compile the training forward: ~1 min of compile first, for long runs
    cudnn_benchmark: bool = True

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "train.epochs", "must be >= 1.")
        _check(self.batch == "auto" or (isinstance(self.batch, int) and not isinstance(self.batch, bool)
                                        and self.batch >= 1), "train.batch",
               f"got {self.batch!r}; use the global batch (an integer >= 1) or auto.")
        _check(0 < self.memory_fraction <= 1, "train.memory_fraction", "must be in (0, 1].")
        _check(set(self.allow_downgrade) <= {"amp", "batch", "imgsz", "model"}, "train.allow_downgrade",
               f"got {list(self.allow_downgrade)}; choose from amp, batch, imgsz, model.")
        _check(self.oom_retries >= 0, "train.oom_retries", "must be >= 0.")
        _check(self.oom_restarts >= 0, "train.oom_restarts", "must be >= 0 (0: an OOM inside a collective ends the run).")
        _check(self.save_every_s >= 0, "train.save_every_s", "must be >= 0 (0: no time-based checkpoints).")
        _check(self.save_every_steps >= 0, "train.save_every_steps", "must be >= 0 (0: only at epoch ends).")
        if isinstance(self.multi_scale, (int, float)) and not isinstance(self.multi_scale, bool):
            _check(0 <= self.multi_scale < 1, "train.multi_scale",
                   f"got {self.multi_scale}; `yolo train`'s float is a fraction of imgsz in [0, 1), e.g. 0.5.")
            f = float(self.multi_scale)
            self.multi_scale = [1.0 - f, 1.0 + f] if f > 0 else []
        _check(isinstance(self.multi_scale, (list, tuple)), "train.multi_scale",
               f"got {self.multi_scale!r}; use [low, high] or a float fraction such as 0.5.")
        _check(not self.multi_scale or (len(self.multi_scale) == 2 and 0 < self.multi_scale[0] <= 1 <= self.multi_scale[1]),
               "train.multi_scale", f"got {list(self.multi_scale)}; use [low, high] around 1, e.g. [0.5, 1.5], or [].")
        _check(all(len(p) == 2 and p[0] >= 0 and p[1] >= 32 and p[1] % 32 == 0 for p in self.imgsz_schedule),
               "train.imgsz_schedule", f"got {self.imgsz_schedule}; use [[first epoch, imgsz], ...] with imgsz a "
               "multiple of 32, e.g. [[0,320],[10,640]].")
        _check(self.nbs >= 1, "train.nbs", "must be >= 1.")
        _check(self.resume is None or isinstance(self.resume, bool) or (isinstance(self.resume, str)
                                                                        and self.resume.strip() != ""),
               "train.resume", f"got {self.resume!r}; use true (this run dir's last.pt), false, or the path of a "
               "yolo-ddp last.pt or of the run dir holding it.")
        _check(self.optimizer in OPTIMIZERS, "train.optimizer", f"choose one of {OPTIMIZERS}.")
        _check(self.amp in AMP_MODES, "train.amp", f"got '{self.amp}'; choose one of {AMP_MODES}.")
        _check(self.sync_bn in ("auto", "on", "off"), "train.sync_bn", "choose auto, on or off.")
        _check(self.sync_bn_impl in ("torch", "collective"), "train.sync_bn_impl", "choose torch or collective.")
        _check(self.loss_norm in LOSS_NORMS, "train.loss_norm", f"got '{self.loss_norm}'; choose one of {LOSS_NORMS}.")
        _check(self.lr0 > 0, "train.lr0", "must be > 0.")
        _check(0 < self.lrf <= 1, "train.lrf", "is the final lr fraction and must be in (0, 1].")
        _check(self.warmup_epochs >= 0, "train.warmup_epochs", "must be >= 0.")
        _check(self.val_every >= 1, "train.val_every", "must be >= 1.")
        _check(self.patience >= 0, "train.patience", "must be >= 0 (0: no early stopping).")
        _check(self.time is None or (isinstance(self.time, (int, float)) and not isinstance(self.time, bool)
                                     and self.time > 0), "train.time",
               f"got {self.time!r}; give the training budget in hours (e.g. train.time=1.5), or null for train.epochs.")
        _check(0.0 <= self.cls_pw <= 1.0, "train.cls_pw", "must be in [0, 1] (0: off), as Ultralytics asserts.")
        freeze = self.freeze
        _check(freeze is None or (isinstance(freeze, int) and not isinstance(freeze, bool) and freeze >= 0)
               or (isinstance(freeze, (list, tuple)) and all(isinstance(i, int) and i >= 0 for i in freeze)),
               "train.freeze", f"got {freeze!r}; give the number of leading layers (train.freeze=10) or their "
               "indices (train.freeze=[0,1,2]), as `yolo train freeze=`.")


# What launcher.nproc_per_node=auto starts on a machine without GPU: one process, the CPU shape with the best
# time-to-accuracy (bench/RESULTS.md, README "Train"); `launcher.nproc_per_node=2` still runs real DDP on CPU.
AUTO_CPU_RANKS = 1


@dataclass
class LauncherConfig:
    nproc_per_node: str = "auto"  # auto: one per GPU; AUTO_CPU_RANKS (1) without GPU
    nnodes: int = 1
    max_restarts: int = 0
    rdzv_endpoint: str = ""  # host:port; empty = this machine, a free port
    monitor_interval_s: float = 1.0

    def __post_init__(self) -> None:
        n = str(self.nproc_per_node)
        _check(n == "auto" or (n.isdigit() and int(n) >= 1), "launcher.nproc_per_node",
               f"got '{n}'; use 'auto' or a positive integer.")
        _check(self.nnodes >= 1, "launcher.nnodes", "must be >= 1.")
        _check(self.max_restarts >= 0, "launcher.max_restarts", "must be >= 0.")


LOGGERS = ("auto", "wandb", "csv", "none")
WANDB_MODES = ("auto", "online", "offline", "disabled")


@dataclass
class LoggerConfig:
    """Where rank 0 reports (yolo_ddp.logging). metrics.csv, steps.csv and results.png are always written."""

    name: str = "auto"  # auto: wandb when the package is importable, else csv; none: local files only
    log_every_steps: int = 10  # optimizer steps between steps.csv rows / W&B step metrics
    project: str = "yolo-ddp"
    entity: str = ""  # W&B team or user; empty: the key's default entity
    tags: list[str] = field(default_factory=list)
    run_name: str = ""  # empty: the swept overrides in a multirun (batch=16,imgsz=640), else name + run dir
    group: str = ""  # empty: the sweep id in a multirun, so a sweep's jobs share one W&B group
    mode: str = "auto"  # auto: online with an API key (WANDB_API_KEY or `wandb login`), else offline
    log_model: bool = False  # upload last.pt/best.pt as a W&B model artifact when the run ends
    val_images: int = 4  # validation images with predicted and true boxes logged per validated epoch

    def __post_init__(self) -> None:
        _check(self.name in LOGGERS, "logger", f"got '{self.name}'; choose one of {LOGGERS} (logger=wandb).")
        _check(self.mode in WANDB_MODES, "logger.mode", f"got '{self.mode}'; choose one of {WANDB_MODES}.")
        _check(self.log_every_steps >= 1, "logger.log_every_steps", "must be >= 1.")
        _check(self.val_images >= 0, "logger.val_images", "must be >= 0 (0 = no images).")


@dataclass
class DistConfig:
    backend: str = "auto"  # auto: nccl on CUDA, gloo on CPU
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        _check(self.backend in ("auto", "nccl", "gloo"), "dist.backend", "choose auto, nccl or gloo.")
        _check(self.timeout_s > 0, "dist.timeout_s", "must be > 0.")


SYNC_STRATEGIES = ("auto", "allreduce", "bf16_compress", "fp16_compress", "powersgd")


@dataclass
class SyncConfig:
    """Gradient sync between ranks; `auto` picks from the topology probe and the cost model (yolo_ddp.sync)."""

    strategy: str = "auto"
    bucket_cap_mb: float = 0.0  # DDP bucket size; 0 = chosen from the topology
    network_gbps: float = 25.0  # link between nodes, Gb/s (25 GbE); the cost model's input for multi-node jobs
    mfu: float = 0.3  # fraction of the GPU's peak FLOPs a YOLO step reaches, for the predicted step time
    min_gain: float = 0.05  # a strategy must save this fraction of the predicted step to replace all-reduce
    powersgd_rank: int = 2
    powersgd_start_iter: int = 100  # plain all-reduce before this step (error feedback needs a warm start)

    def __post_init__(self) -> None:
        _check(self.strategy in SYNC_STRATEGIES, "sync.strategy",
               f"got '{self.strategy}'; choose one of {SYNC_STRATEGIES}.")
        _check(self.bucket_cap_mb >= 0, "sync.bucket_cap_mb", "must be >= 0 (0 = chosen from the topology).")
        _check(self.network_gbps > 0, "sync.network_gbps", "must be > 0 (Gb/s between nodes, e.g. 25 or 100).")
        _check(0 < self.mfu <= 1, "sync.mfu", "must be in (0, 1].")
        _check(0 <= self.min_gain < 1, "sync.min_gain", "must be in [0, 1).")
        _check(self.powersgd_rank >= 1, "sync.powersgd_rank", "must be >= 1.")
        _check(self.powersgd_start_iter >= 2, "sync.powersgd_start_iter",
               "must be >= 2: PowerSGD's error feedback needs at least one plain all-reduce first.")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    name: str = "run"
    run_dir: str = "."  # set by the launcher to the job's Hydra output dir
    plan: bool = False  # print the memory/run plan and exit without training
