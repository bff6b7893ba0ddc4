"""Encoder/decoder bodies, chosen by `model.net` through a registry (add a net: add an entry).

Encoders map images (..., H, W, C) to (..., out_dim) raw features; decoders map latents
(..., D) to (..., H, W, C, P) raw likelihood parameters, P per data channel.
"""

from vaekit.nets.conv import ConvDecoder, ConvEncoder
from vaekit.nets.mlp import MLPDecoder, MLPEncoder

ENCODERS = {
    "mlp": lambda cfg, shape, out, rngs: MLPEncoder(shape, cfg.hidden, out, cfg.activation, rngs=rngs),
    "conv": lambda cfg, shape, out, rngs: ConvEncoder(shape, cfg.conv_channels, cfg.conv_dense, out, rngs=rngs),
}
DECODERS = {
    "mlp": lambda cfg, d, shape, p, rngs: MLPDecoder(d, cfg.hidden, shape, p, cfg.activation, rngs=rngs),
    "conv": lambda cfg, d, shape, p, rngs: ConvDecoder(d, cfg.conv_channels, cfg.conv_dense, shape, p, rngs=rngs),
}


def build_encoder(cfg, image_shape, out_dim, *, rngs):
    """Encoder for `cfg.net` (a ModelConfig) producing `out_dim` features."""
    return ENCODERS[cfg.net](cfg, tuple(image_shape), out_dim, rngs)


def build_decoder(cfg, latent_dim, image_shape, params_per_channel, *, rngs):
    """Decoder for `cfg.net` from `latent_dim` to `params_per_channel` outputs per pixel channel."""
    return DECODERS[cfg.net](cfg, latent_dim, tuple(image_shape), params_per_channel, rngs)


__all__ = ["ConvDecoder", "ConvEncoder", "MLPDecoder", "MLPEncoder", "build_decoder", "build_encoder"]
