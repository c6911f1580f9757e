"""Training: the loop, its checkpoints, speed-ups and processes, the cached-feature head,
and the one place that assembles a run from source, plan and data (:mod:`.assemble`)."""
