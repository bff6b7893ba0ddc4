"""Encoder/decoder bodies, chosen by `model.net` through a registry (add a net: add an entry).

Encoders map data (..., *event) to (..., out_dim) raw features; decoders map latents (..., D)
to (..., *event, P) raw likelihood parameters, P per data entry. Both take an optional
condition c (N, K) (a one-hot label) used as `nets.conditioning` describes; `cond_dim` = 0
builds an unconditional net.
"""

from vaekit.errors import VaekitError
from vaekit.nets.conditioning import MODES as CONDITIONING_MODES
from vaekit.nets.conv import ConvDecoder, ConvEncoder
from vaekit.nets.mlp import MLPDecoder, MLPEncoder
from vaekit.nets.resnet import ResNetDecoder, ResNetEncoder

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


def build_encoder(cfg, event_shape, out_dim, *, cond_dim: int = 0, condition: str | None = None, rngs):
    """Encoder for `cfg.net` (a ModelConfig) producing `out_dim` features."""
    kw = dict(cond_dim=cond_dim, condition=condition, rngs=rngs)
    return ENCODERS[cfg.net](cfg, _check_shape(cfg, event_shape), out_dim, kw)


def build_decoder(cfg, latent_dim, event_shape, params_per_channel, *, cond_dim: int = 0,
                  condition: str | None = None, rngs):
    """Decoder for `cfg.net` from `latent_dim` to `params_per_channel` outputs per data entry."""
    kw = dict(cond_dim=cond_dim, condition=condition, rngs=rngs)
    return DECODERS[cfg.net](cfg, latent_dim, _check_shape(cfg, event_shape), params_per_channel, kw)


__all__ = ["CONDITIONING_MODES", "ConvDecoder", "ConvEncoder", "MLPDecoder", "MLPEncoder", "build_decoder",
           "build_encoder"]
