"""Training recipes: the Ray Train driver and worker, the probe, the baseline, tuning, CV, comparison."""
