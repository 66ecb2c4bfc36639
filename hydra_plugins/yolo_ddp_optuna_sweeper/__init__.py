"""Our Optuna sweeper for `hydra/sweeper=optuna`: a study that survives re-runs (Hydra finds it here)."""
