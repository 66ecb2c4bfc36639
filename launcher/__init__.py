"""yolo-ddp's entry point and process management (the only package that knows Hydra)."""

import os

# Before Ultralytics is imported anywhere, in the launcher and in every worker: nothing downloads.
os.environ.setdefault("YOLO_OFFLINE", "1")
