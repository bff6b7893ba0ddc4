"""Latent tools: interpolation (lerp, slerp), attribute vectors and latent arithmetic, a 2-D latent
map, and a PCA scatter of codes coloured by label.

All of them work on posterior means (`encode(x).mean`, capability `latent_vector`) and decoder
means, through the model interface only. Pictures are written with `vaekit.plots` (pixel-exact
grids, atomic writes).

slerp (Shoemake 1985; used for generative models' latents by White 2016, "Sampling Generative
Networks"): z(t) = sin((1-t) w)/sin(w) z0 + sin(t w)/sin(w) z1, w the angle between z0 and z1.
Under an N(0, I) prior, codes of typical inputs have norms near sqrt(D); a straight line between
two of them passes through the low-norm middle of the space, which the prior rarely visits;
slerp keeps to the sphere when |z0| = |z1| (in general the norm moves along the arc between them).

Attribute vectors (Larsen et al. 2016; White 2016): v_a = mean(z | y = a) - mean(z), over the
codes of a labelled split; adding alpha * v_a to the code of an example of another class moves
it towards class a.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vaekit.errors import VaekitError

INTERPOLATIONS = ("lerp", "slerp")


# --------------------------------------------------------------------------- interpolation


def lerp(z0: np.ndarray, z1: np.ndarray, steps: int) -> np.ndarray:
    """Straight lines from z0 to z1 (..., D): (..., steps, D), endpoints included."""
    z0, z1 = np.asarray(z0, np.float64), np.asarray(z1, np.float64)
    t = np.linspace(0.0, 1.0, steps)[:, None]
    return (1 - t) * z0[..., None, :] + t * z1[..., None, :]


def slerp(z0: np.ndarray, z1: np.ndarray, steps: int, eps: float = 1e-7) -> np.ndarray:
    """Spherical interpolation from z0 to z1 (..., D): (..., steps, D), endpoints included.

    Where z0 and z1 are (nearly) parallel, or one of them is zero, the angle is undefined or
    the formula unstable, and the straight line is returned instead.
    """
    z0, z1 = np.asarray(z0, np.float64), np.asarray(z1, np.float64)
    n0, n1 = np.linalg.norm(z0, axis=-1, keepdims=True), np.linalg.norm(z1, axis=-1, keepdims=True)
    cos = np.sum(z0 * z1, axis=-1, keepdims=True) / np.maximum(n0 * n1, 1e-300)
    omega = np.arccos(np.clip(cos, -1.0, 1.0))[..., None, :]  # (..., 1, 1)
    t = np.linspace(0.0, 1.0, steps)[:, None]  # (steps, 1)
    so = np.sin(omega)
    degenerate = (so < eps) | (n0[..., None, :] * n1[..., None, :] == 0)
    safe = np.where(degenerate, 1.0, so)
    a = np.where(degenerate, 1 - t, np.sin((1 - t) * omega) / safe)
    b = np.where(degenerate, t, np.sin(t * omega) / safe)
    out = a * z0[..., None, :] + b * z1[..., None, :]
    out[..., 0, :], out[..., -1, :] = z0, z1  # exact endpoints
    return out


def interpolate(z0: np.ndarray, z1: np.ndarray, steps: int, method: str = "lerp") -> np.ndarray:
    """`lerp` or `slerp` by name: (..., steps, D)."""
    if method not in INTERPOLATIONS:
        raise VaekitError(f"--method must be one of {', '.join(INTERPOLATIONS)}, got '{method}'")
    return (lerp if method == "lerp" else slerp)(z0, z1, steps)


# --------------------------------------------------------------------------- attribute vectors


def attribute_vector(z: np.ndarray, y: np.ndarray, attribute: int) -> np.ndarray:
    """mean(z | y = attribute) - mean(z) over codes z (N, D) with labels y (N,): (D,)."""
    z, y = np.asarray(z, np.float64), np.asarray(y)
    if len(z) != len(y):
        raise VaekitError(f"{len(z)} codes but {len(y)} labels")
    mask = y == attribute
    if not mask.any():
        raise VaekitError(f"no example has label {attribute} (labels present: "
                          f"{', '.join(map(str, np.unique(y)[:20]))})")
    if mask.all():
        raise VaekitError(f"every example has label {attribute}: an attribute vector needs other labels too")
    return z[mask].mean(0) - z.mean(0)


def _codes(run, split: str, limit: int | None):
    from vaekit.evaluate.embed import encode_all, examples

    data = examples(run, split=split, limit=limit)
    if "y" not in data:
        raise VaekitError(f"the {split} split of run '{run.path}' has no labels")
    z, _ = encode_all(run, data["x"], data["y"])
    return data["x"], data["y"], z


def arithmetic(run, attribute: int, *, split: str = "test", examples: int = 8, limit: int | None = 5000,
               alphas=(0.0, 0.5, 1.0, 1.5, 2.0)) -> tuple[np.ndarray, list[str], list[float], np.ndarray]:
    """Add the attribute vector of class `attribute` to codes of examples of other classes.

    Returns (images (examples * (1 + len(alphas)), ...): each row the input then its code
    decoded at z + alpha * v for every alpha; row labels; alphas; v (D,)).
    """
    import jax.numpy as jnp

    from vaekit.models import require

    require(run.model, "latent_vector", "vaekit arithmetic")
    if run.model.capabilities.conditional:
        raise VaekitError("vaekit arithmetic edits unconditional codes; a conditional model changes class with "
                          "its label (vaekit reconstruct --label C)")
    x, y, z = _codes(run, split, limit)
    v = attribute_vector(z, y, attribute)
    others = np.flatnonzero(y != attribute)[:examples]
    zs = z[others][:, None, :] + np.asarray(alphas)[None, :, None] * v  # (E, A, D)
    decoded = np.asarray(run.model.decode(jnp.asarray(zs.reshape(-1, z.shape[1]), jnp.float32)).mean())
    decoded = decoded.reshape(len(others), len(alphas), *decoded.shape[1:])
    images = np.concatenate([np.asarray(x[others], np.float32)[:, None], decoded], axis=1)
    labels = [f"y={int(c)}" for c in y[others]]
    return images.reshape(-1, *images.shape[2:]), labels, list(alphas), v


def save_arithmetic(path, run, attribute: int, **kw) -> Path:
    """Write the `arithmetic` grid to a PNG (first column the inputs)."""
    from vaekit import plots

    images, labels, alphas, v = arithmetic(run, attribute, **kw)
    title = (f"input, then z + alpha * v with v = mean(z|y={attribute}) - mean(z) (|v| = {np.linalg.norm(v):.2f}), "
             f"alpha = {', '.join(f'{a:g}' for a in alphas)}")
    plots.save_images(path, images, ncols=1 + len(alphas), title=title, row_labels=labels)
    return Path(path)


# --------------------------------------------------------------------------- pictures


def latent_map(model, n: int = 20, span: float = 0.95, y: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decoded grid over a 2-D latent space (Kingma & Welling 2014, Fig. 4): the n x n codes at the
    prior's quantiles linspace(1 - span, span) per axis (N(0, 1) inverse CDF), rows top to bottom
    from high z1 to low. Returns (images (n*n, ...), axis values (n,))."""
    import jax.numpy as jnp
    from scipy.stats import norm

    from vaekit.models import require

    require(model, "latent_vector", "a latent map")
    if not 0.5 < span < 1:
        raise VaekitError(f"span must be in (0.5, 1), got {span}")
    values = norm.ppf(np.linspace(1 - span, span, n))
    zx, zy = np.meshgrid(values, values[::-1])
    z = np.stack([zx.ravel(), zy.ravel()], axis=1).astype(np.float32)
    labels = None if y is None else jnp.full((len(z),), y)
    images = np.asarray(model.decode(jnp.asarray(z), labels).mean())
    if images.shape[0] != len(z):
        raise VaekitError("the latent map needs a model with a 2-D latent vector")
    return images, values


def save_latent_map(path, run, n: int = 20, label: int | None = None) -> Path:
    """A PNG of the decoded 2-D latent grid; one line for a run whose latent is not 2-D."""
    from vaekit import plots

    d = int(run.model.latent_dim)
    if d != 2:
        raise VaekitError(f"a latent map needs model.latent_dim=2; run '{run.path}' has {d} "
                          f"(see the PCA scatter of its codes in `vaekit report`)")
    if run.model.capabilities.conditional and label is None:
        raise VaekitError("a conditional model's latent map is drawn for one class: give --label C")
    images, values = latent_map(run.model, n, y=label)
    plots.save_images(path, images, ncols=n, title=f"decoded latent grid, z at N(0,1) quantiles "
                                                    f"{values[0]:.2f} .. {values[-1]:.2f} per axis")
    return Path(path)


def pca_2d(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project codes (N, D) onto their first two principal components: ((N, 2), explained variance ratios (2,))."""
    z = np.asarray(z, np.float64)
    zc = z - z.mean(0)
    _, s, vt = np.linalg.svd(zc, full_matrices=False)
    var = s**2
    comps = vt[:2]
    proj = zc @ comps.T
    if proj.shape[1] < 2:
        proj = np.concatenate([proj, np.zeros((len(z), 2 - proj.shape[1]))], axis=1)
    ratio = var[:2] / max(var.sum(), 1e-300)
    return proj, np.pad(ratio, (0, 2 - len(ratio)))


def save_pca_scatter(path, z: np.ndarray, y: np.ndarray | None = None, title: str | None = None) -> Path:
    """A PNG scatter of codes projected on their first two principal components, coloured by label."""
    import matplotlib.pyplot as plt

    from vaekit import plots

    proj, ratio = pca_2d(z)
    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    if y is None:
        ax.scatter(proj[:, 0], proj[:, 1], s=3, alpha=0.5, color="tab:blue", linewidths=0)
    else:
        y = np.asarray(y)
        classes = np.unique(y)
        cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
        for i, c in enumerate(classes):
            m = y == c
            ax.scatter(proj[m, 0], proj[m, 1], s=3, alpha=0.6, color=cmap(i % cmap.N), linewidths=0, label=str(c))
        if len(classes) <= 20:
            ax.legend(title="label", fontsize=7, markerscale=3, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set_xlabel(f"PC 1 ({100 * ratio[0]:.0f}% of variance)")
    ax.set_ylabel(f"PC 2 ({100 * ratio[1]:.0f}% of variance)")
    ax.set_title(title or f"posterior means of {len(proj)} examples, PCA", fontsize=10)
    ax.grid(alpha=0.3)
    plots.save_figure(fig, Path(path))
    return Path(path)


__all__ = ["INTERPOLATIONS", "arithmetic", "attribute_vector", "interpolate", "latent_map", "lerp", "pca_2d",
           "save_arithmetic", "save_latent_map", "save_pca_scatter", "slerp"]
