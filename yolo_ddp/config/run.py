"""How the job runs: launcher, logger, process group and gradient sync configs."""

from __future__ import annotations

from dataclasses import dataclass, field

from yolo_ddp.config.checks import check

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
        check(n == "auto" or (n.isdigit() and int(n) >= 1), "launcher.nproc_per_node",
               f"got '{n}'; use 'auto' or a positive integer.")
        check(self.nnodes >= 1, "launcher.nnodes", "must be >= 1.")
        check(self.max_restarts >= 0, "launcher.max_restarts", "must be >= 0.")


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
    plots: bool = True  # `yolo train plots`: false writes no results.png and logs no validation images
    # Create or update the project's saved W&B view "yolo-ddp" when the job (or sweep) ends, on rank 0; without a
    # key it writes dashboard.json instead (README "The team's W&B dashboard"; `python -m launcher.dashboard`).
    dashboard: bool = False
    # What the running multirun sweeps (filled in by the launcher): the dashboard's parallel-coordinates axes.
    sweep_keys: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check(self.name in LOGGERS, "logger", f"got '{self.name}'; choose one of {LOGGERS} (logger=wandb).")
        check(self.mode in WANDB_MODES, "logger.mode", f"got '{self.mode}'; choose one of {WANDB_MODES}.")
        check(self.log_every_steps >= 1, "logger.log_every_steps", "must be >= 1.")
        check(self.val_images >= 0, "logger.val_images", "must be >= 0 (0 = no images).")


@dataclass
class DistConfig:
    backend: str = "auto"  # auto: nccl on CUDA, gloo on CPU
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        check(self.backend in ("auto", "nccl", "gloo"), "dist.backend", "choose auto, nccl or gloo.")
        check(self.timeout_s > 0, "dist.timeout_s", "must be > 0.")


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
        check(self.strategy in SYNC_STRATEGIES, "sync.strategy",
               f"got '{self.strategy}'; choose one of {SYNC_STRATEGIES}.")
        check(self.bucket_cap_mb >= 0, "sync.bucket_cap_mb", "must be >= 0 (0 = chosen from the topology).")
        check(self.network_gbps > 0, "sync.network_gbps", "must be > 0 (Gb/s between nodes, e.g. 25 or 100).")
        check(0 < self.mfu <= 1, "sync.mfu", "must be in (0, 1].")
        check(0 <= self.min_gain < 1, "sync.min_gain", "must be in [0, 1).")
        check(self.powersgd_rank >= 1, "sync.powersgd_rank", "must be >= 1.")
        check(self.powersgd_start_iter >= 2, "sync.powersgd_start_iter",
               "must be >= 2: PowerSGD's error feedback needs at least one plain all-reduce first.")
