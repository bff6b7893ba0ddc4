"""Training: optimizers, the training state, the jitted steps and the loop over them."""
