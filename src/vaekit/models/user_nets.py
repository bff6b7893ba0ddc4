"""Your own encoder and decoder in a vaekit model: the contract, its check, and how a run records them.

A kind that takes user nets (`ModelBase.user_nets`: the VAE and the kinds built on it but hvae and
ladder) wraps them here so that the rest of the model sees what its own nets give:

    encoder(x) -> (mean, raw_scale)     x: (N, *event) float32 (images (N, H, W, C) in [0, 1]);
                                        mean, raw_scale: (N, latent_dim) each; raw_scale is
                                        unconstrained, mapped to a standard deviation by
                                        `model.posterior_scale` (softplus + 1e-4, or a clamped
                                        log-variance)
    decoder(z) -> raw likelihood        z: (N, latent_dim); the output (N, *event) for one
                  parameters            parameter per data entry (bernoulli: logits; gaussian:
                                        the mean), (N, *event, P) for more (gaussian_learned:
                                        P = 2, mean and raw scale; categorical: P = 256 logits)

A conditional kind (cvae) calls `encoder(x, c)` and `decoder(z, c)` with c the one-hot label
(N, num_classes). Both nets are checked once, when the model is built, on a batch of two examples
of the data's shape (shapes only, nothing computed); a mismatch is one line naming the module, the
expected and the actual shape.

A run records each module by its import path and constructor arguments (`record`): every
parameter of the class's `__init__` but `rngs` must be kept on the instance under the same name
(`self.hidden = hidden`) with a YAML value (numbers, strings, booleans, None, lists of them), so
that loading and resuming rebuild the module (`rebuild`) before restoring its parameters.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import logging

import jax
import jax.numpy as jnp
from flax import nnx

from vaekit.config.schema import Config
from vaekit.errors import VaekitError

log = logging.getLogger("vaekit")

ROLES = ("encoder", "decoder")
_CHECK_BATCH = 2  # examples in the shape-only batch the contract is checked on


def _name(net: nnx.Module) -> str:
    return type(net).__name__


def _abstract_call(role: str, net: nnx.Module, *args: jax.ShapeDtypeStruct):
    """The output structure of `net(*args)` (shape-only: no arithmetic, the module unchanged); a
    failure inside the net is one line naming it and the input."""
    graphdef, state = nnx.split(net)
    try:
        return jax.eval_shape(lambda st, *a: nnx.merge(graphdef, st)(*a), state, *args)
    except Exception as e:  # the user's code: any error it raises is reported as the contract's
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        inputs = " and ".join(str(tuple(a.shape)) for a in args)
        raise VaekitError(f"{role} {_name(net)} failed on an input of shape {inputs}: {type(e).__name__}: {first}") \
            from None


class UserEncoder(nnx.Module):
    """A user's encoder as vaekit's nets are: (N, *event) [, c] -> (N, 2 latent_dim) = [mean, raw_scale]."""

    def __init__(self, net: nnx.Module, event_shape: tuple[int, ...], latent_dim: int, cond_dim: int = 0):
        self.net = net
        self.conditional = cond_dim > 0
        x = jax.ShapeDtypeStruct((_CHECK_BATCH, *event_shape), jnp.float32)
        c = (jax.ShapeDtypeStruct((_CHECK_BATCH, cond_dim), jnp.float32),) if cond_dim else ()
        out = _abstract_call("encoder", net, x, *c)
        expected = (_CHECK_BATCH, latent_dim)
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            got = f"an array of shape {out.shape}" if isinstance(out, jax.ShapeDtypeStruct) else type(out).__name__
            raise VaekitError(f"encoder {_name(net)} returned {got}: expected a pair (mean, raw_scale), each "
                              f"{expected}")
        for what, part in zip(("mean", "raw_scale"), out):
            got = tuple(part.shape) if isinstance(part, jax.ShapeDtypeStruct) else type(part).__name__
            if got != expected:
                raise VaekitError(f"encoder {_name(net)} returned {what} of shape {got} for latent_dim "
                                  f"{latent_dim}: expected {expected}")

    def __call__(self, x: jax.Array, c: jax.Array | None = None) -> jax.Array:
        mean, raw_scale = self.net(x, c) if self.conditional else self.net(x)
        return jnp.concatenate([mean, raw_scale], axis=-1)  # (N, 2 D)


class UserDecoder(nnx.Module):
    """A user's decoder as vaekit's nets are: z (..., D) [, c] -> (..., *event, P) raw likelihood parameters.

    The user's module sees (N, D): leading axes (k draws of N examples) are folded into one.
    """

    def __init__(self, net: nnx.Module, latent_dim: int, event_shape: tuple[int, ...], params_per_entry: int,
                 likelihood: str, cond_dim: int = 0):
        self.net = net
        self.conditional = cond_dim > 0
        self.params_per_entry = params_per_entry
        z = jax.ShapeDtypeStruct((_CHECK_BATCH, latent_dim), jnp.float32)
        c = (jax.ShapeDtypeStruct((_CHECK_BATCH, cond_dim), jnp.float32),) if cond_dim else ()
        out = _abstract_call("decoder", net, z, *c)
        expected = (_CHECK_BATCH, *event_shape) + ((params_per_entry,) if params_per_entry > 1 else ())
        got = tuple(out.shape) if isinstance(out, jax.ShapeDtypeStruct) else type(out).__name__
        if got != expected:
            raise VaekitError(f"decoder {_name(net)} returned shape {got} for likelihood {likelihood} and data of "
                              f"shape {tuple(event_shape)}: expected {expected}")

    def __call__(self, z: jax.Array, c: jax.Array | None = None) -> jax.Array:
        lead = z.shape[:-1]
        flat = z.reshape(-1, z.shape[-1])  # (prod(lead), D)
        if self.conditional:
            c = jnp.broadcast_to(c, (*lead, c.shape[-1])).reshape(-1, c.shape[-1])
            out = self.net(flat, c)
        else:
            out = self.net(flat)
        out = out.reshape(*lead, *out.shape[1:])
        return out[..., None] if self.params_per_entry == 1 else out  # (..., *event, P)


# --------------------------------------------------------------------------- recording and rebuilding

_YAML_SCALARS = (int, float, str, bool, type(None))


def _yaml_value(v) -> bool:
    if isinstance(v, (list, tuple)):
        return all(_yaml_value(e) for e in v)
    return isinstance(v, _YAML_SCALARS)


def _plain(v):
    return [_plain(e) for e in v] if isinstance(v, (list, tuple)) else v


def import_path(cls: type) -> str:
    """"package.module:Class" for a class defined at a module's top level."""
    return f"{cls.__module__}:{cls.__qualname__}"


def constructor_args(role: str, net: nnx.Module) -> dict:
    """The arguments `type(net)(**args, rngs=...)` rebuilds `net` from: each parameter of its
    `__init__` but `rngs`, read from the instance attribute of the same name."""
    cls = type(net)
    if "<locals>" in cls.__qualname__:
        raise VaekitError(f"{role} {cls.__name__} is defined inside a function: vaekit records the class by import "
                          f"path to load the run; define it at the top level of a module")
    kept = vars(net)
    args = {}
    for name, p in list(inspect.signature(cls.__init__).parameters.items())[1:]:
        if name == "rngs":
            continue
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise VaekitError(f"{role} {cls.__name__} takes *{name}: vaekit rebuilds your module from named "
                              f"constructor arguments only")
        if name not in kept:
            raise VaekitError(f"{role} {cls.__name__} does not keep its constructor argument '{name}' as "
                              f"self.{name}: vaekit rebuilds the module from its arguments to load the run")
        if not _yaml_value(kept[name]):
            raise VaekitError(f"{role} {cls.__name__} argument '{name}' is a {type(kept[name]).__name__}: a run "
                              f"records numbers, strings, booleans, None and lists of them")
        args[name] = _plain(kept[name])
    return args


def record(cfg: Config, encoder: nnx.Module | None = None, decoder: nnx.Module | None = None) -> Config:
    """`cfg` with `model.encoder`/`model.decoder` (import paths) and their `*_args` (constructor
    arguments) for the given modules, so that the run can rebuild them; one line when a module
    breaks the recording rule (module docstring)."""
    changes = {}
    for role, net in zip(ROLES, (encoder, decoder)):
        if net is None:
            continue
        if not isinstance(net, nnx.Module):
            raise VaekitError(f"{role} must be an nnx.Module, got {type(net).__name__}")
        changes[role] = import_path(type(net))
        changes[f"{role}_args"] = constructor_args(role, net)
        if type(net).__module__ == "__main__":
            log.warning("%s %s is defined in __main__: the run loads back only where __main__ defines it (put the "
                        "class in a module to load the run anywhere)", role, type(net).__name__)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **changes)) if changes else cfg


def rebuild(role: str, path: str, args: dict, rngs: nnx.Rngs) -> nnx.Module:
    """The module recorded as `model.<role>` (its import path and arguments), with parameters from `rngs`."""
    module_name, _, qualname = path.partition(":")
    if not (module_name and qualname):
        raise VaekitError(f"model.{role} '{path}' must name a class as 'package.module:Class'")
    try:
        obj = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = vars(obj)[part]
    except (ImportError, KeyError) as e:
        why = f"{type(e).__name__}: {e}" if isinstance(e, ImportError) else f"no {qualname} in {module_name}"
        raise VaekitError(f"model.{role} '{path}' cannot be imported: {why} (install or put it on PYTHONPATH to load "
                          f"this run)") from None
    takes_rngs = "rngs" in inspect.signature(obj.__init__).parameters
    return obj(**args, rngs=rngs) if takes_rngs else obj(**args)


def given_or_recorded(model_cfg, rngs: nnx.Rngs, encoder: nnx.Module | None, decoder: nnx.Module | None) -> dict:
    """{role: module} for each user net: the instance given, else the one the config records."""
    nets = {}
    for role, given, path, args in (("encoder", encoder, model_cfg.encoder, model_cfg.encoder_args),
                                    ("decoder", decoder, model_cfg.decoder, model_cfg.decoder_args)):
        if given is None and path:
            given = rebuild(role, path, args, rngs)
        if given is not None:
            nets[role] = given
    return nets


__all__ = ["UserDecoder", "UserEncoder", "constructor_args", "given_or_recorded", "import_path", "rebuild", "record"]
