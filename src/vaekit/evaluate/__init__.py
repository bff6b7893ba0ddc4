"""Evaluation of trained models: likelihood bounds, reconstructions and disentanglement metrics."""

from vaekit.evaluate.likelihood import active_units, evaluate, log_likelihood, posterior_means, reconstruction_error

__all__ = ["active_units", "evaluate", "log_likelihood", "posterior_means", "reconstruction_error"]
