"""Model and training configs (`model.*`, `train.*`): `yolo train`'s arguments with its meaning."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from yolo_ddp.config.checks import check

AMP_MODES = ("auto", "bf16", "fp16", "off")
OPTIMIZERS = ("auto", "SGD", "MuSGD", "Adam", "Adamax", "AdamW", "NAdam", "RAdam", "RMSProp")  # `yolo train`'s
LOSS_NORMS = ("global", "per_batch")


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
        check(self.cfg.endswith((".yaml", ".yml")), "model.cfg",
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
    # An args.yaml written by `yolo train` (or a hyp yaml with its keys): its recipe, key for key, under this run's
    # command-line overrides (yolo_ddp/config/from_yolo.py; the launcher applies it before composing).
    from_yolo: str = ""
    patience: int = 100
    freeze: Any = None
    save_period: int = -1
    # Ultralytics' `time`: hours of training that override epochs. After each epoch the run re-estimates its epochs
    # from the mean epoch time (LR schedule, close_mosaic and the last validation follow), and it ends, validated
    # and saved, at the first optimizer step past the budget. null: train.epochs.
    time: Any = None
    # Ultralytics' `deterministic` (its init_seeds): deterministic algorithms where torch has them (warn_only), cuDNN
    # deterministic, CUBLAS_WORKSPACE_CONFIG set; cuDNN benchmark stays off, as in `yolo train`, whatever
    # train.cudnn_benchmark says. false: the fastest kernels (and train.cudnn_benchmark applies).
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
        check(self.epochs >= 1, "train.epochs", "must be >= 1.")
        check(self.batch == "auto" or (isinstance(self.batch, int) and not isinstance(self.batch, bool)
                                        and self.batch >= 1), "train.batch",
               f"got {self.batch!r}; use the global batch (an integer >= 1) or auto.")
        check(0 < self.memory_fraction <= 1, "train.memory_fraction", "must be in (0, 1].")
        check(set(self.allow_downgrade) <= {"amp", "batch", "imgsz", "model"}, "train.allow_downgrade",
               f"got {list(self.allow_downgrade)}; choose from amp, batch, imgsz, model.")
        check(self.oom_retries >= 0, "train.oom_retries", "must be >= 0.")
        check(self.oom_restarts >= 0, "train.oom_restarts", "must be >= 0 (0: an OOM inside a collective ends the run).")
        check(self.save_every_s >= 0, "train.save_every_s", "must be >= 0 (0: no time-based checkpoints).")
        check(self.save_every_steps >= 0, "train.save_every_steps", "must be >= 0 (0: only at epoch ends).")
        if isinstance(self.multi_scale, (int, float)) and not isinstance(self.multi_scale, bool):
            check(0 <= self.multi_scale < 1, "train.multi_scale",
                   f"got {self.multi_scale}; `yolo train`'s float is a fraction of imgsz in [0, 1), e.g. 0.5.")
            f = float(self.multi_scale)
            self.multi_scale = [1.0 - f, 1.0 + f] if f > 0 else []
        check(isinstance(self.multi_scale, (list, tuple)), "train.multi_scale",
               f"got {self.multi_scale!r}; use [low, high] or a float fraction such as 0.5.")
        check(not self.multi_scale or (len(self.multi_scale) == 2 and 0 < self.multi_scale[0] <= 1 <= self.multi_scale[1]),
               "train.multi_scale", f"got {list(self.multi_scale)}; use [low, high] around 1, e.g. [0.5, 1.5], or [].")
        check(all(len(p) == 2 and p[0] >= 0 and p[1] >= 32 and p[1] % 32 == 0 for p in self.imgsz_schedule),
               "train.imgsz_schedule", f"got {self.imgsz_schedule}; use [[first epoch, imgsz], ...] with imgsz a "
               "multiple of 32, e.g. [[0,320],[10,640]].")
        check(self.nbs >= 1, "train.nbs", "must be >= 1.")
        check(self.resume is None or isinstance(self.resume, bool) or (isinstance(self.resume, str)
                                                                        and self.resume.strip() != ""),
               "train.resume", f"got {self.resume!r}; use true (this run dir's last.pt), false, or the path of a "
               "yolo-ddp last.pt or of the run dir holding it.")
        check(self.optimizer in OPTIMIZERS, "train.optimizer", f"choose one of {OPTIMIZERS}.")
        check(self.amp in AMP_MODES, "train.amp", f"got '{self.amp}'; choose one of {AMP_MODES}.")
        check(self.sync_bn in ("auto", "on", "off"), "train.sync_bn", "choose auto, on or off.")
        check(self.sync_bn_impl in ("torch", "collective"), "train.sync_bn_impl", "choose torch or collective.")
        check(self.loss_norm in LOSS_NORMS, "train.loss_norm", f"got '{self.loss_norm}'; choose one of {LOSS_NORMS}.")
        check(self.lr0 > 0, "train.lr0", "must be > 0.")
        check(0 < self.lrf <= 1, "train.lrf", "is the final lr fraction and must be in (0, 1].")
        check(self.warmup_epochs >= 0, "train.warmup_epochs", "must be >= 0.")
        check(self.val_every >= 1, "train.val_every", "must be >= 1.")
        check(self.patience >= 0, "train.patience", "must be >= 0 (0: no early stopping).")
        check(self.time is None or (isinstance(self.time, (int, float)) and not isinstance(self.time, bool)
                                     and self.time > 0), "train.time",
               f"got {self.time!r}; give the training budget in hours (e.g. train.time=1.5), or null for train.epochs.")
        check(0.0 <= self.cls_pw <= 1.0, "train.cls_pw", "must be in [0, 1] (0: off), as Ultralytics asserts.")
        freeze = self.freeze
        check(freeze is None or (isinstance(freeze, int) and not isinstance(freeze, bool) and freeze >= 0)
               or (isinstance(freeze, (list, tuple)) and all(isinstance(i, int) and i >= 0 for i in freeze)),
               "train.freeze", f"got {freeze!r}; give the number of leading layers (train.freeze=10) or their "
               "indices (train.freeze=[0,1,2]), as `yolo train freeze=`.")
