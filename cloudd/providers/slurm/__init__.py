"""The `slurm` cloud type."""
