"""One DDP job's processes: its name and run dir, its workers through torch's elastic launcher, SLURM nodes."""
