"""yolo-ddp's library: Ultralytics YOLO trained with DistributedDataParallel, one stage per package.

Data flows config -> plan -> data -> engine -> logging. The root holds the foundations every package uses:
`config` (typed configs), `dist` (process-group helpers that degrade to one process), `plan` and `schedule`
(the frozen run plan and its optimizer-step arithmetic). The packages, lowest first: `topology` and `sync`
(how GPUs are linked, how gradients are synced), `memory` (what fits), `data` (index and loaders), `logging`
(rank-0 reports), `engine` (the training loop and everything it runs). Nothing here knows Hydra.
"""
