"""Evaluation of trained models: likelihood bounds, reconstructions and disentanglement metrics."""
