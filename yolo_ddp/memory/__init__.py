"""What fits in memory: the estimate per candidate, the planner (`batch=auto`, downgrades) and OOM recovery."""
