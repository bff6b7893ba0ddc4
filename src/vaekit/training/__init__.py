"""Training: optimizers (optim), the typed training state (state), the pure jitted steps (step), the
Trainer and its chunk loop (loop), where records go (sinks) and a run's pictures (pictures).
`vaekit.runs.train.train` runs all of it as one run directory."""
