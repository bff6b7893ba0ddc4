"""Shapes: a dSprites-equivalent dataset rasterized on the fly.

Every image is 64x64, one channel, binary: a white shape on black. Five factors of
variation, in the order and with the grid sizes of dSprites (Matthey et al., 2017):

======  ===========  =====  =======================================================
index   name         size   values
======  ===========  =====  =======================================================
0       shape        3      0 square, 1 ellipse, 2 heart
1       scale        6      ``linspace(0.5, 1, 6)``
2       orientation  40     ``linspace(0, 2*pi, 40)`` radians (0 and 2*pi both occur)
3       pos_x        32     ``linspace(0, 1, 32)``; larger moves the shape right
4       pos_y        32     ``linspace(0, 1, 32)``; larger moves the shape **down**
======  ===========  =====  =======================================================

That is 3*6*40*32*32 = 737,280 images; the flat index of factor classes ``c`` is
``c . (245760, 40960, 1024, 32, 1)`` (row-major, as in dSprites).

Rasterization is analytic: a pixel is white when its *center* lies inside the shape.
Each pixel center is moved into the shape's own frame (translate to the shape center,
rotate by -orientation, divide by ``BASE_SIZE * scale``) and tested with an implicit
inside-function, in shape units:

* square: ``max(|u|, |v|) <= 1`` (side 2, circumradius sqrt(2) = 1.414);
* ellipse: ``(u / 1.4)^2 + (v / 0.7)^2 <= 1`` (2:1, so orientation matters; radius 1.4);
* heart: ``(u^2 + w^2 - 1)^3 - u^2 w^3 <= 0`` with ``w = v + 0.2935``, the classic
  implicit heart curve shifted so that its area centroid is the shape center
  (radius 1.294, reached at the tip).

Geometry in pixels (a pixel ``(row, col)`` has its center at ``(row + 0.5, col + 0.5)``):
``BASE_SIZE`` is 10.5, so the largest shape (the square at scale 1) has radius
10.5 * sqrt(2) = 14.85 px. Shape centers lie on pixel centers, ``16.5 + 31 * pos``,
i.e. 16.5, 17.5, ..., 47.5 for the 32 position classes (a one-pixel step, symmetric
about the image center 32). So every point of every shape, at every scale and
orientation, lies at least 16.5 - 14.85 = 1.65 px from the image edge: the outermost
row and column of pixels (centers 0.5 and 63.5) are always black and no shape is ever
clipped. The square's half-side ``BASE_SIZE * scale`` (5.25, 6.3, 7.35, 8.4, 9.45,
10.5 px) is never an integer, so at orientation 0 its edges never pass through a pixel
center and its pixel area is exactly ``(2 * floor(BASE_SIZE * scale) + 1)^2``, 441 at
scale 1 (see :func:`expected_square_area`).

Rendering is one jitted JAX function over the whole 64x64 frame, in float32: fast on the host
(:func:`render`) and traceable, so training renders its batches on the device straight from grid
indices (:func:`render_batch`) and the whole grid never has to exist in memory. It is
deterministic and needs no data files. (Two backends may round ``cos``/``sin`` differently in the
last bit, which could flip a pixel whose center lies within about 1e-6 px of an edge.)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from vaekit.errors import VaekitError

FACTOR_NAMES = ("shape", "scale", "orientation", "pos_x", "pos_y")
FACTOR_SIZES = (3, 6, 40, 32, 32)
NUM_IMAGES = 737_280
#: Multipliers turning factor classes into the flat grid index (row-major).
FACTOR_STRIDES = (245_760, 40_960, 1_024, 32, 1)
SHAPE_NAMES = ("square", "ellipse", "heart")

IMAGE_SIZE = 64
#: Pixels per shape unit at scale 1 (the square at scale 1 is 21 px wide).
BASE_SIZE = 10.5
#: Pixel coordinate of the shape center for position 0; position 1 is this + POSITION_SPAN.
POSITION_START = 16.5
POSITION_SPAN = 31.0
SCALES = np.linspace(0.5, 1.0, FACTOR_SIZES[1])
ORIENTATIONS = np.linspace(0.0, 2.0 * np.pi, FACTOR_SIZES[2])
POSITIONS = np.linspace(0.0, 1.0, FACTOR_SIZES[3])
#: Ellipse semi-axes in shape units.
ELLIPSE_AXES = (1.4, 0.7)
#: Vertical offset putting the heart curve's area centroid at the shape center.
HEART_CENTROID = 0.2935
#: Largest distance from the shape center to a point of each shape, in shape units.
SHAPE_RADIUS = (math.sqrt(2.0), ELLIPSE_AXES[0], 1.2935)
#: Largest number of images materialized at once (train split of load_shapes_splits).
MAX_MATERIALIZE = 200_000

# Images rendered per compiled call of `render` (bounds temporary memory to about 100 MB).
_CHUNK = 2_048

assert int(np.prod(FACTOR_SIZES)) == NUM_IMAGES
assert BASE_SIZE * max(SHAPE_RADIUS) < POSITION_START - 0.5 - 1.0  # every shape stays inside the frame
assert POSITIONS[1] * POSITION_SPAN == 1.0  # position classes are one pixel apart


def _as_classes(classes: np.ndarray) -> np.ndarray:
    """Validate an (N, 5) array of factor classes and return it as int64."""
    classes = np.asarray(classes)
    if classes.ndim != 2 or classes.shape[1] != len(FACTOR_SIZES):
        raise VaekitError(f"shapes factor classes must have shape (N, {len(FACTOR_SIZES)}), got {classes.shape}")
    if classes.size and not np.issubdtype(classes.dtype, np.integer):
        raise VaekitError(f"shapes factor classes must be integers, got dtype {classes.dtype}")
    classes = classes.astype(np.int64, copy=False)
    if classes.size:
        sizes = np.asarray(FACTOR_SIZES)
        bad = (classes < 0) | (classes >= sizes)
        if bad.any():
            j = int(np.argmax(bad.any(axis=0)))
            raise VaekitError(
                f"shapes factor '{FACTOR_NAMES[j]}' has a class out of range 0..{FACTOR_SIZES[j] - 1} "
                f"(min {int(classes[:, j].min())}, max {int(classes[:, j].max())})"
            )
    return classes


def index_to_classes(index: np.ndarray) -> np.ndarray:
    """Flat grid indices (N,) -> factor classes (N, 5) int64."""
    index = np.asarray(index)
    if index.ndim != 1:
        raise VaekitError(f"shapes indices must be a 1-D array, got shape {index.shape}")
    if index.size and not np.issubdtype(index.dtype, np.integer):
        raise VaekitError(f"shapes indices must be integers, got dtype {index.dtype}")
    index = index.astype(np.int64, copy=False)
    if index.size and (index.min() < 0 or index.max() >= NUM_IMAGES):
        raise VaekitError(f"shapes index out of range 0..{NUM_IMAGES - 1} (min {int(index.min())}, max {int(index.max())})")
    strides = np.asarray(FACTOR_STRIDES, dtype=np.int64)
    sizes = np.asarray(FACTOR_SIZES, dtype=np.int64)
    return (index[:, None] // strides) % sizes


def classes_to_index(classes: np.ndarray) -> np.ndarray:
    """Factor classes (N, 5) -> flat grid indices (N,) int64."""
    classes = _as_classes(classes)
    return classes @ np.asarray(FACTOR_STRIDES, dtype=np.int64)


def classes_to_values(classes: np.ndarray) -> np.ndarray:
    """Factor classes (N, 5) -> float64 values (N, 5): shape id, scale, angle (rad), x, y."""
    classes = _as_classes(classes)
    return np.stack(
        [
            classes[:, 0].astype(np.float64),
            SCALES[classes[:, 1]],
            ORIENTATIONS[classes[:, 2]],
            POSITIONS[classes[:, 3]],
            POSITIONS[classes[:, 4]],
        ],
        axis=1,
    )


def _inside(shape_id: int, u, v) -> jax.Array:
    """Implicit inside-test of one shape in its own frame (shape units, y up)."""
    if shape_id == 0:
        return jnp.maximum(jnp.abs(u), jnp.abs(v)) <= 1.0
    if shape_id == 1:
        a, b = ELLIPSE_AXES
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0
    w = v + HEART_CENTROID
    u2 = u * u
    return (u2 + w * w - 1.0) ** 3 - u2 * w**3 <= 0.0


def _render_jax(classes: jax.Array) -> jax.Array:
    """Traceable renderer: int (N, 5) classes -> float32 (N, 64, 64, 1) in {0, 1}."""
    scale = jnp.asarray(SCALES, jnp.float32)[classes[:, 1]] * BASE_SIZE
    angle = jnp.asarray(ORIENTATIONS, jnp.float32)[classes[:, 2]]
    # Position class k puts the center on the center of pixel 16 + k (coordinate 16.5 + k).
    cx = (POSITION_START + classes[:, 3].astype(jnp.float32))[:, None, None]
    cy = (POSITION_START + classes[:, 4].astype(jnp.float32))[:, None, None]
    centers = jnp.arange(IMAGE_SIZE, dtype=jnp.float32) + 0.5
    dx = centers[None, None, :] - cx  # right is +x
    dy = cy - centers[None, :, None]  # rows grow downwards, so up is +y
    cos = (jnp.cos(angle) / scale)[:, None, None]
    sin = (jnp.sin(angle) / scale)[:, None, None]
    u = cos * dx + sin * dy  # rotate by -orientation, then divide by the size
    v = cos * dy - sin * dx
    square, ellipse, heart = (_inside(k, u, v) for k in range(FACTOR_SIZES[0]))
    shape = classes[:, 0][:, None, None]
    inside = jnp.where(shape == 0, square, jnp.where(shape == 1, ellipse, heart))
    return inside.astype(jnp.float32)[..., None]


_render_jit = jax.jit(_render_jax)


def render(classes: np.ndarray) -> np.ndarray:
    """Rasterize factor classes (N, 5) into float32 images (N, 64, 64, 1) in {0, 1}."""
    classes = _as_classes(classes)
    out = np.zeros((classes.shape[0], IMAGE_SIZE, IMAGE_SIZE, 1), dtype=np.float32)
    for start in range(0, classes.shape[0], _CHUNK):
        part = classes[start : start + _CHUNK].astype(np.int32)
        size = min(_CHUNK, 1 << (len(part) - 1).bit_length())  # pad to a power of two: few compiled shapes
        if len(part) < size:
            part = np.concatenate([part, np.zeros((size - len(part), part.shape[1]), np.int32)])
        images = np.asarray(_render_jit(part))
        out[start : start + _CHUNK] = images[: len(out) - start]
    return out


def render_batch(batch: dict) -> dict:
    """Traceable: a batch of grid indices ``{"index": (B,), ...}`` -> ``{"x": images, ...}``.

    The training split of the ``shapes`` source holds grid indices only; the trainer gathers
    a batch of them on the device and calls this to draw its images there.
    """
    batch = dict(batch)
    index = batch.pop("index")
    strides = jnp.asarray(FACTOR_STRIDES, jnp.int32)
    sizes = jnp.asarray(FACTOR_SIZES, jnp.int32)
    batch["x"] = _render_jax((index[:, None] // strides) % sizes)
    return batch


def sample_classes(n: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``n`` factor-class rows (N, 5) int64, each factor uniform and independent."""
    if n < 0:
        raise VaekitError(f"number of samples must be non-negative, got {n}")
    return rng.integers(0, np.asarray(FACTOR_SIZES), size=(n, len(FACTOR_SIZES)), dtype=np.int64)


def expected_square_area(scale_class: int) -> int:
    """Pixel count of the square at orientation 0 for a scale class.

    The half-side ``BASE_SIZE * scale`` is never an integer (it is 5.25, 6.3, ...,
    10.5), so the square's edges never pass through pixel centers and the count
    is exact: ``(2 * floor(BASE_SIZE * scale) + 1)^2``.
    """
    half = BASE_SIZE * SCALES[scale_class]
    return (2 * math.floor(half) + 1) ** 2


def _permutation(seed: int) -> np.ndarray:
    """The seeded permutation of all grid indices every subset is a slice of."""
    return np.random.default_rng(seed).permutation(NUM_IMAGES)


def _check_size(name: str, value: int, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise VaekitError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise VaekitError(f"{name} must be in {low}..{high}, got {value}")
    return int(value)


def _examples(classes: np.ndarray) -> dict[str, np.ndarray]:
    return {"x": render(classes), "y": classes[:, 0].astype(np.int32), "factors": classes.astype(np.int32)}


class ShapesData:
    """Batch source over the shapes grid, rendering each batch on the fly.

    Args:
        limit: ``None`` samples the whole 737,280-image grid uniformly (with
            replacement). An integer ``N`` fixes a seeded random subset of ``N`` grid
            indices (the first ``N`` of a seeded permutation of the grid), so that a
            small run still sees every factor value; batches are drawn uniformly
            from that subset. It equals the train split of
            :func:`load_shapes_splits` for the same ``limit`` and ``seed``.
        seed: seeds the subset; batches are drawn with the generator passed to
            :meth:`batch`.

    The object also serves as a ground-truth source for
    :mod:`vaekit.evaluate.disentanglement`: :meth:`sample_classes` and :meth:`render`
    always cover the whole grid, whatever ``limit`` is.
    """

    factor_names = FACTOR_NAMES
    factor_sizes = FACTOR_SIZES
    image_shape = (IMAGE_SIZE, IMAGE_SIZE, 1)

    def __init__(self, *, limit: int | None = None, seed: int = 0):
        self.seed = int(seed)
        self.limit = None if limit is None else _check_size("shapes limit", limit, 1, NUM_IMAGES)
        self.indices = None if self.limit is None else _permutation(self.seed)[: self.limit]

    def __len__(self) -> int:
        return NUM_IMAGES if self.limit is None else self.limit

    def batch(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Draw ``batch_size`` examples uniformly (with replacement) and render them.

        Returns:
            ``{"x": float32 (B, 64, 64, 1), "y": int32 (B,) shape class,
            "factors": int32 (B, 5)}``.
        """
        batch_size = _check_size("batch size", batch_size, 1, 10**7)
        if self.indices is None:
            index = rng.integers(0, NUM_IMAGES, size=batch_size)
        else:
            index = self.indices[rng.integers(0, self.limit, size=batch_size)]
        return _examples(index_to_classes(index))

    def materialize(self) -> dict[str, np.ndarray]:
        """Render the whole subset (grid-index order of the subset) as arrays.

        Raises:
            VaekitError: without a ``limit``, or with one above 200,000 images
                (3.3 GB of float32); use :meth:`batch` then.
        """
        if self.limit is None or self.limit > MAX_MATERIALIZE:
            raise VaekitError(
                f"shapes: materializing needs a limit of at most {MAX_MATERIALIZE:,} images (got {self.limit}); "
                "draw batches instead"
            )
        return _examples(index_to_classes(self.indices))

    def sample_classes(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Uniform factor classes over the whole grid (see :func:`sample_classes`)."""
        return sample_classes(n, rng)

    def render(self, classes: np.ndarray) -> np.ndarray:
        """Images for factor classes (see :func:`render`)."""
        return render(classes)


def split_indices(
    *, limit: int | None = None, seed: int = 0, val_size: int = 2_000, test_size: int = 2_000
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grid indices of the train/val/test splits, slices of one seeded permutation of the grid.

    Test is the permutation's last ``test_size`` indices and val the ``val_size`` before those,
    so the held-out splits do not depend on ``limit``. Train is its first ``limit`` indices, or,
    with ``limit=None``, every index that is not held out (the whole grid but val and test).
    The train indices for a ``limit`` equal ``ShapesData(limit=limit, seed=seed).indices``.
    """
    val_size = _check_size("shapes val_size", val_size, 1, NUM_IMAGES)
    test_size = _check_size("shapes test_size", test_size, 1, NUM_IMAGES)
    held_out = val_size + test_size
    if held_out >= NUM_IMAGES:
        raise VaekitError(f"shapes: val_size + test_size leaves no training images in the {NUM_IMAGES:,}-image grid")
    limit = NUM_IMAGES - held_out if limit is None else _check_size("shapes limit", limit, 1, NUM_IMAGES)
    if limit + held_out > NUM_IMAGES:
        raise VaekitError(f"shapes: limit + val_size + test_size exceeds the {NUM_IMAGES:,} images of the grid")
    perm = _permutation(int(seed))
    return perm[:limit], perm[NUM_IMAGES - held_out : NUM_IMAGES - test_size], perm[NUM_IMAGES - test_size :]


def load_shapes_splits(
    *, limit: int | None = None, seed: int = 0, val_size: int = 2_000, test_size: int = 2_000
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Rendered train/val/test splits of the shapes grid (see :func:`split_indices`).

    ``limit`` defaults to 50,000 here: every split is rendered into host memory.

    Returns:
        ``(train, val, test)``, each ``{"x": float32 (N, 64, 64, 1), "y": int32 (N,)
        shape class, "factors": int32 (N, 5)}``.

    Raises:
        VaekitError: ``limit`` above 200,000, sizes below 1, or more images requested
            than the grid holds.
    """
    limit = 50_000 if limit is None else _check_size("shapes limit", limit, 1, MAX_MATERIALIZE)
    parts = split_indices(limit=limit, seed=seed, val_size=val_size, test_size=test_size)
    return tuple(_examples(index_to_classes(part)) for part in parts)


def load_shapes_source(
    path: str | None = None, *, val_size: int = 2_000, seed: int = 0, limit: int | None = None,
    data_config=None,  # the run's DataConfig: this source has no options of its own
) -> dict:
    """The ``shapes`` data source of ``vaekit.data`` (see :func:`split_indices`).

    The training split holds grid indices, not images: ``{"index": int32 (N,), "y": int32
    (N,)}``, N being ``limit`` or, without one, the whole grid but the held-out images
    (733,280 with the default sizes). Its images are drawn on the device, batch by batch,
    by :func:`render_batch`, returned as ``"train_transform"``. Val and test (``val_size``
    images each) are rendered as usual. ``path`` must be ``None``: the data is generated.
    """
    if path is not None:
        raise VaekitError(f"data source 'shapes' is generated and takes no path (got {path!r})")
    train, val, test = split_indices(limit=limit, seed=seed, val_size=val_size, test_size=val_size)
    classes = index_to_classes(train)
    return {
        "train": {"index": train.astype(np.int32), "y": classes[:, 0].astype(np.int32)},
        "val": _examples(index_to_classes(val)),
        "test": _examples(index_to_classes(test)),
        "train_transform": render_batch,
    }
