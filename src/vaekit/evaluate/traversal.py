"""Latent traversals: decode a code with one latent moved along a range, the picture behind
`vaekit traverse` and the disentanglement docs."""

from __future__ import annotations

import numpy as np

from vaekit.errors import VaekitError

def latent_traversal(model, x, y=None, *, index: int = 0, steps: int = 11, span: float = 3.0,
                     dims: int = 0) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Decoded sweeps of each latent around the code of one seed image.

    The latents are ordered by their KL to the prior (where the posterior has a per-dimension
    KL; else by the variance of their posterior means), averaged over the images ``x``; row ``r``
    sweeps the ``r``-th of them over ``linspace(-span, span, steps)`` with every other latent at
    the posterior mean of ``x[index]``.

    Args:
        model: a trained model in eval mode (``encode``, ``decode``).
        x, y: images (N, H, W, C) (and labels for conditional models) that rank the latents;
            ``x[index]`` is the seed.
        dims: keep only the ``dims`` latents with the most KL (0: all).

    Returns:
        ``(images (rows * steps, H, W, C), row labels "z<d> KL <nats>", swept values)``.
    """
    import jax.numpy as jnp

    if steps < 2 or span <= 0:
        raise VaekitError("a traversal needs steps >= 2 and a positive span (--steps, --range)")
    if not 0 <= index < len(x):
        raise VaekitError(f"seed index must be in [0, {len(x)}), got {index}")
    from vaekit.models import require

    require(model, "latent_vector", "a latent traversal")
    q = model.encode(jnp.asarray(x), None if y is None else jnp.asarray(y))
    kl = q.kl_per_dim()  # None where the posterior has no closed-form KL (a flow, several layers)
    if kl is not None:
        kl, stat = np.asarray(kl).mean(0), "KL"  # (D,) average KL of each latent over these images
    else:
        kl, stat = np.asarray(q.mean).var(0), "var"
    order = np.argsort(-kl)[:dims] if dims else np.argsort(-kl)
    values = np.linspace(-span, span, steps)
    base = np.asarray(q.mean)[index]
    z = np.repeat(base[None, None], len(order) * steps, 0).reshape(len(order), steps, -1)
    for row, d in enumerate(order):
        z[row, :, d] = values
    z = z.reshape(-1, z.shape[-1])
    yz = None if y is None else jnp.full((len(z),), int(np.asarray(y)[index]))
    images = np.asarray(model.decode(jnp.asarray(z), yz).mean())
    return images, [f"z{d} {stat} {kl[d]:.2f}" for d in order], values
