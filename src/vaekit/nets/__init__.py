"""Encoder/decoder bodies, chosen by `model.net` through a registry (add a net: add an entry).

Encoders map data (..., *event) to (..., out_dim) raw features; decoders map latents (..., D)
to (..., *event, P) raw likelihood parameters, P per data entry. Both take an optional
condition c (N, K) (a one-hot label) used as `nets.conditioning` describes; `cond_dim` = 0
builds an unconditional net.
"""

import contextlib

import jax.numpy as jnp
from flax import nnx

from vaekit.errors import VaekitError
from vaekit.nets.conditioning import MODES as CONDITIONING_MODES
from vaekit.nets.conv import ConvDecoder, ConvEncoder
from vaekit.nets.dense import DenseDecoder, DenseEncoder
from vaekit.nets.mlp import MLP, MLPDecoder, MLPEncoder
from vaekit.nets.resnet import ResNetDecoder, ResNetEncoder


def _batch_normed(batch_norm: bool, cond_dim: int) -> bool:
    """Whether to build the batch-normalized dense net (`nets.dense`; model.kind=hvae asks for it
    with its `model.batch_norm`, for model.net=mlp). Those nets take no condition."""
    if batch_norm and cond_dim:
        raise VaekitError("model.batch_norm=true builds unconditional dense nets; this model is conditional")
    return batch_norm


ENCODERS = {
    "mlp": lambda cfg, shape, out, kw: MLPEncoder(shape, cfg.hidden, out, cfg.activation, **kw),
    "conv": lambda cfg, shape, out, kw: ConvEncoder(shape, cfg.conv_channels, cfg.conv_dense, out, **kw),
    "resnet": lambda cfg, shape, out, kw: ResNetEncoder(shape, cfg.conv_channels, cfg.resnet_blocks, cfg.conv_dense, out,
                                                        **kw),
}
DECODERS = {
    "mlp": lambda cfg, d, shape, p, kw: MLPDecoder(d, cfg.hidden, shape, p, cfg.activation, **kw),
    "conv": lambda cfg, d, shape, p, kw: ConvDecoder(d, cfg.conv_channels, cfg.conv_dense, shape, p, **kw),
    "resnet": lambda cfg, d, shape, p, kw: ResNetDecoder(d, cfg.conv_channels, cfg.resnet_blocks, cfg.conv_dense, shape,
                                                         p, **kw),
}
IMAGE_ONLY = {"conv", "resnet"}  # nets that need (H, W, C) examples


def _check_shape(cfg, event_shape) -> tuple[int, ...]:
    event_shape = tuple(event_shape)
    if cfg.net in IMAGE_ONLY and len(event_shape) != 3:
        raise VaekitError(f"model.net={cfg.net} needs image data (H, W, C); this data has examples of shape "
                          f"{event_shape} (use model.net=mlp)")
    return event_shape


def build_encoder(cfg, event_shape, out_dim, *, cond_dim: int = 0, condition: str | None = None,
                  batch_norm: bool = False, rngs):
    """Encoder for `cfg.net` (a ModelConfig) producing `out_dim` features; `batch_norm`: the
    batch-normalized dense net instead of the MLP (model.net=mlp, unconditional)."""
    event_shape = _check_shape(cfg, event_shape)
    if _batch_normed(batch_norm, cond_dim):
        return DenseEncoder(event_shape, cfg.hidden, out_dim, cfg.activation, rngs=rngs)
    return ENCODERS[cfg.net](cfg, event_shape, out_dim, dict(cond_dim=cond_dim, condition=condition, rngs=rngs))


def build_decoder(cfg, latent_dim, event_shape, params_per_channel, *, cond_dim: int = 0,
                  condition: str | None = None, batch_norm: bool = False, rngs):
    """Decoder for `cfg.net` from `latent_dim` to `params_per_channel` outputs per data entry;
    `batch_norm` as for `build_encoder`."""
    event_shape = _check_shape(cfg, event_shape)
    if _batch_normed(batch_norm, cond_dim):
        return DenseDecoder(latent_dim, cfg.hidden, event_shape, params_per_channel, cfg.activation, rngs=rngs)
    kw = dict(cond_dim=cond_dim, condition=condition, rngs=rngs)
    return DECODERS[cfg.net](cfg, latent_dim, event_shape, params_per_channel, kw)


# The nets whose hidden layers train.precision=bf16 computes in bfloat16, each with its output
# layer, which stays float32 (its raw outputs are the likelihood's or the posterior's parameters).
OUTPUT_LAYER = {
    MLP: lambda m: m.layers[-1],
    ConvEncoder: lambda m: m.head,
    ConvDecoder: lambda m: m.deconvs[-1],
    ResNetEncoder: lambda m: m.head,
    ResNetDecoder: lambda m: m.ups[-1],
}
COMPUTE_DTYPES = {"fp32": None, "bf16": jnp.bfloat16}
_LAYERS = (nnx.Linear, nnx.Conv, nnx.ConvTranspose)


def mixed_precision_layers(model: nnx.Module) -> list[nnx.Module]:
    """The dense and conv layers of the model's encoder/decoder nets (`OUTPUT_LAYER`'s classes,
    wherever they sit in the model) but their output layers: those that train.precision=bf16
    computes in bfloat16. Discriminators, PixelCNN priors, text RNNs and flows are not among them."""
    found: dict[int, nnx.Module] = {}
    for _, net in nnx.iter_modules(model):
        if type(net) in OUTPUT_LAYER:
            out = OUTPUT_LAYER[type(net)](net)
            for _, layer in nnx.iter_modules(net):
                if isinstance(layer, _LAYERS) and layer is not out:
                    found[id(layer)] = layer
    return list(found.values())


def output_layer(net: nnx.Module) -> nnx.Module:
    """The output layer of an encoder or decoder net (the first `OUTPUT_LAYER` net inside it)."""
    for _, module in nnx.iter_modules(net):
        if type(module) in OUTPUT_LAYER:
            return OUTPUT_LAYER[type(module)](module)
    raise TypeError(f"{type(net).__name__} holds none of the nets in OUTPUT_LAYER")


@contextlib.contextmanager
def compute_dtype(model: nnx.Module, precision: str):
    """Within the block, `mixed_precision_layers(model)` compute in `precision`'s dtype ("fp32":
    unchanged, "bf16": bfloat16): Flax's `dtype` of each layer, so the float32 parameters are cast
    where they are used and their gradients come back in float32. A graph split inside the block
    (`nnx.split`) keeps that dtype; the model itself is restored on exit."""
    dtype = COMPUTE_DTYPES[precision]
    layers = mixed_precision_layers(model) if dtype is not None else []
    before = [layer.dtype for layer in layers]
    try:
        for layer in layers:
            layer.dtype = dtype
        yield len(layers)
    finally:
        for layer, d in zip(layers, before):
            layer.dtype = d


__all__ = ["COMPUTE_DTYPES", "CONDITIONING_MODES", "ConvDecoder", "ConvEncoder", "MLPDecoder", "MLPEncoder",
           "OUTPUT_LAYER", "build_decoder", "build_encoder", "compute_dtype", "mixed_precision_layers", "output_layer"]
