"""vaekit: variational autoencoders on JAX, Flax NNX and Optax.

    import vaekit
    run = vaekit.load_run("runs/mnist-mlp-...")
    q = run.model.encode(x)            # posterior over z
    x_hat = run.model.reconstruct(x)   # decoder mean at the posterior mean
"""

# Importing vaekit changes nothing in the process (environment, malloc, JAX's config, log levels):
# the CPU speed settings are `vaekit.runtime.configure()`, which the `vaekit` command applies first.
# Everything below is imported on first use (PEP 562), so that `import vaekit` and `vaekit --help`
# do not import JAX, Flax, Optax or Orbax.
_LAZY = {
    "Run": "vaekit.runs.run",
    "load_run": "vaekit.runs.run",
    "Config": "vaekit.config",
    "DataConfig": "vaekit.config",
    "ModelConfig": "vaekit.config",
    "ObjectiveConfig": "vaekit.config",
    "TrainConfig": "vaekit.config",
    "list_presets": "vaekit.config",
    "resolve": "vaekit.config",
    "DataSpec": "vaekit.data",
    "Splits": "vaekit.data",
    "load_data": "vaekit.data",
    "VaekitError": "vaekit.errors",
    "CVAE": "vaekit.models",
    "MODELS": "vaekit.models",
    "VAE": "vaekit.models",
    "Capabilities": "vaekit.models",
    "ParamGroup": "vaekit.models",
    "build_model": "vaekit.models",
    "Trainer": "vaekit.training.loop",
    "train": "vaekit.runs.train",
}


# The subpackages a user reaches as attributes (`vaekit.evaluate.evaluate(...)` after `import vaekit`),
# imported on first use like the names above.
_SUBMODULES = ("config", "core", "data", "distributed", "evaluate", "models", "nets", "plots", "report", "runs",
               "runtime", "training")


def __getattr__(name: str):
    import importlib

    if name in _SUBMODULES:
        return importlib.import_module(f"vaekit.{name}")  # the import system sets it as an attribute too
    if name not in _LAZY:
        raise AttributeError(f"module 'vaekit' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))


__all__ = [
    "CVAE",
    "Capabilities",
    "DataSpec",
    "MODELS",
    "ParamGroup",
    "VAE",
    "Config",
    "DataConfig",
    "ModelConfig",
    "ObjectiveConfig",
    "Run",
    "Splits",
    "TrainConfig",
    "Trainer",
    "VaekitError",
    "build_model",
    "list_presets",
    "load_data",
    "load_run",
    "resolve",
    "train",
]
