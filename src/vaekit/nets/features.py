"""Feature nets: small conv classifiers whose penultimate activations feed the sample-quality
metrics (`evaluate.quality`: FID, precision/recall), the perceptual loss (`models.sharp`) and label
accuracy; their training, `save` and the choice of a net for a run are in `evaluate.features`.

The architecture is LeNet-sized:

    x (N, H, W, C) in [0, 1]
    -> conv 5x5 (C -> c1 = 16), ReLU, 2x2 max-pool
    -> conv 5x5 (c1 -> c2 = 32), ReLU, 2x2 max-pool    (convs "SAME" padded; one per `conv{i}/*` key)
    -> flatten -> dense (-> F = 128), ReLU               the penultimate features (N, F)
    -> one linear head per labelled factor (F -> K_j)    logits (a digit: one head of 10)

vaekit ships one trained on the MNIST training split (`mnist_lenet.npz`, next to this module) and one for the generated
shapes with a head per factor (`shapes_lenet.npz`; shape, scale, orientation, pos_x, pos_y), both
reproduced by benchmarks/feature_net.py. A user brings their own for other data as an .npz of float32 arrays
(no pickled objects; it is read with `allow_pickle=False`) with exactly these keys:

    input_shape      int (3,)  the (H, W, C) the net takes
    conv{i}/kernel   (5, 5, C_in, C_out)  for i = 0, 1, ...  (any number of conv layers, any odd size)
    conv{i}/bias     (C_out,)
    dense/kernel     (flat, F)   flat = (H / 2^L) * (W / 2^L) * C_last for L conv layers (floor division)
    dense/bias       (F,)
    head{j}/kernel   (F, K_j)    for j = 0, 1, ...   (at least one head)
    head{j}/bias     (K_j,)

A file named NAME.npz may have a sidecar NAME.json with {"sha256": "<hex digest of the .npz>"};
the digest is checked on load (the shipped nets' digests are in this module).
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vaekit.errors import VaekitError

#: The nets vaekit ships: name -> (package file, SHA-256 of that file).
SHIPPED = {
    "mnist": ("mnist_lenet.npz", "bdd671c0e7255baa54547af213a2890ee2748ae0a1f92c21f2e7b77eee74ea4c"),
    "shapes": ("shapes_lenet.npz", "7e89dece2219af3d647f67d0cc33cd76f14a05e2d76660fe13ed255c1e9f9315"),
}


class FeatureNet(nnx.Module):
    """A LeNet-style classifier; `features(x)` are its penultimate activations, `logits(x)` its heads."""

    def __init__(self, input_shape, channels=(16, 32), features: int = 128, heads=(10,), kernel: int = 5, *,
                 rngs: nnx.Rngs):
        self.input_shape = tuple(int(s) for s in input_shape)
        h, w, c = self.input_shape
        ins = (c, *channels[:-1])
        self.convs = nnx.List([nnx.Conv(i, o, (kernel, kernel), padding="SAME", rngs=rngs)
                               for i, o in zip(ins, channels)])
        for _ in channels:
            h, w = h // 2, w // 2
        if h < 1 or w < 1:
            raise VaekitError(f"a feature net with {len(channels)} pooling layers needs images of at least "
                              f"{2 ** len(channels)}x{2 ** len(channels)}; got {self.input_shape[0]}x{self.input_shape[1]}")
        self.dense = nnx.Linear(h * w * channels[-1], features, rngs=rngs)
        self.heads = nnx.List([nnx.Linear(features, k, rngs=rngs) for k in heads])

    @property
    def feature_dim(self) -> int:
        return self.dense.out_features

    def activations(self, x: jax.Array) -> list[jax.Array]:
        """Every layer's activations for images (N, H, W, C): the conv blocks', then the features (N, F)."""
        h = jnp.asarray(x, jnp.float32)
        out = []
        for conv in self.convs:
            h = nnx.max_pool(jax.nn.relu(conv(h)), (2, 2), strides=(2, 2))
            out.append(h)
        out.append(jax.nn.relu(self.dense(h.reshape(h.shape[0], -1))))
        return out

    def features(self, x: jax.Array) -> jax.Array:
        """Penultimate features (N, F)."""
        return self.activations(x)[-1]

    def logits(self, x: jax.Array) -> list[jax.Array]:
        """One (N, K_j) logit array per head."""
        return self.head_logits(self.features(x))

    def head_logits(self, f: jax.Array) -> list[jax.Array]:
        """The heads' logits from penultimate features f (N, F): `logits` without featurizing again."""
        return [head(f) for head in self.heads]

    def __call__(self, x: jax.Array) -> list[jax.Array]:
        return self.logits(x)


# --------------------------------------------------------------------------- the .npz format


def to_arrays(net: FeatureNet) -> dict[str, np.ndarray]:
    """The net as the documented .npz layout (float32 arrays and the int input shape)."""
    out = {"input_shape": np.asarray(net.input_shape, np.int64)}
    layers = [(f"conv{i}", m) for i, m in enumerate(net.convs)] + [("dense", net.dense)]
    layers += [(f"head{j}", m) for j, m in enumerate(net.heads)]
    for name, m in layers:
        out[f"{name}/kernel"] = np.asarray(m.kernel[...], np.float32)
        out[f"{name}/bias"] = np.asarray(m.bias[...], np.float32)
    return out


def sha256(path: str | Path | resources.abc.Traversable) -> str:
    return hashlib.sha256(Path(path).read_bytes() if isinstance(path, (str, Path)) else path.read_bytes()).hexdigest()


def _count(keys, prefix: str) -> int:
    n = 0
    while f"{prefix}{n}/kernel" in keys:
        n += 1
    return n


def from_arrays(arrays: dict[str, np.ndarray], where: str = "feature net") -> FeatureNet:
    """Build a FeatureNet from the documented layout; one-line VaekitError on a missing key or a bad shape."""
    keys = set(arrays)
    if "input_shape" not in keys:
        raise VaekitError(f"{where}: no 'input_shape' array (the documented layout is in vaekit.nets.features)")
    shape = tuple(int(s) for s in np.asarray(arrays["input_shape"]).ravel())
    n_conv, n_head = _count(keys, "conv"), _count(keys, "head")
    needed = [f"{p}/{k}" for p in [*(f"conv{i}" for i in range(n_conv)), "dense", *(f"head{j}" for j in range(n_head))]
              for k in ("kernel", "bias")]
    missing = [k for k in needed if k not in keys]
    if len(shape) != 3 or n_conv == 0 or n_head == 0 or missing:
        raise VaekitError(f"{where}: expected input_shape (3,), conv0.., dense, head0.. kernels and biases; "
                          f"missing {', '.join(missing) or 'conv0/kernel or head0/kernel'}")
    kernels = [np.asarray(arrays[f"conv{i}/kernel"]) for i in range(n_conv)]
    size = kernels[0].shape[0]
    channels = tuple(int(k.shape[-1]) for k in kernels)
    dense = np.asarray(arrays["dense/kernel"])
    heads = tuple(int(np.asarray(arrays[f"head{j}/kernel"]).shape[-1]) for j in range(n_head))
    try:
        net = nnx.eval_shape(lambda: FeatureNet(shape, channels, int(dense.shape[-1]), heads, size,
                                                rngs=nnx.Rngs(0)))
    except (VaekitError, IndexError, ValueError) as e:
        raise VaekitError(f"{where}: its arrays do not form a feature net ({e})") from None
    layers = [(f"conv{i}", m) for i, m in enumerate(net.convs)] + [("dense", net.dense)]
    layers += [(f"head{j}", m) for j, m in enumerate(net.heads)]
    for name, m in layers:
        for attr in ("kernel", "bias"):
            value = np.asarray(arrays[f"{name}/{attr}"], np.float32)
            var = getattr(m, attr)
            if value.shape != var.shape:
                raise VaekitError(f"{where}: {name}/{attr} has shape {value.shape}, expected {tuple(var.shape)} "
                                  f"for input_shape {shape}")
            var.set_value(jnp.asarray(value))
    return net


def _read_npz(source, where: str) -> dict[str, np.ndarray]:
    try:
        with np.load(source, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError) as e:
        raise VaekitError(f"{where} is not a readable .npz of arrays ({str(e).splitlines()[0]})") from None


def load(path: str | Path) -> FeatureNet:
    """A user's feature net from PATH.npz (checked against PATH.json's "sha256" where that exists)."""
    path = Path(path)
    if not path.is_file():
        raise VaekitError(f"feature net '{path}' does not exist")
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        try:
            expected = json.loads(sidecar.read_text()).get("sha256")
        except json.JSONDecodeError:
            raise VaekitError(f"'{sidecar}' is not valid JSON") from None
        if expected and sha256(path) != expected:
            raise VaekitError(f"feature net '{path}' does not match the SHA-256 in '{sidecar}' (damaged or replaced)")
    return from_arrays(_read_npz(path, f"feature net '{path}'"), f"feature net '{path}'")


def load_shipped(name: str) -> FeatureNet:
    """A net vaekit ships ("mnist"), checked against its SHA-256."""
    filename, digest = SHIPPED[name]
    source = resources.files("vaekit") / "nets" / filename
    if not source.is_file():
        raise VaekitError(f"vaekit's {name} feature net ({filename}) is missing from the installation")
    if sha256(source) != digest:
        raise VaekitError(f"vaekit's {name} feature net ({filename}) does not match its SHA-256 (damaged install)")
    with source.open("rb") as f:
        return from_arrays(_read_npz(f, filename), filename)


__all__ = ["FeatureNet", "SHIPPED", "from_arrays", "load", "load_shipped", "sha256", "to_arrays"]
