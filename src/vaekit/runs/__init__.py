"""Run directories: their layout and atomic files, Orbax checkpoints, loading a run back."""
