"""The shapes dataset: factor grid indexing, rasterization geometry and batch sources."""

import math

import numpy as np
import pytest

from vaekit.data import shapes
from vaekit.errors import VaekitError


def grid(**fixed):
    """Every combination of the given factor classes (lists or ints), as an (N, 5) array."""
    axes = [np.atleast_1d(fixed.get(name, 0)) for name in shapes.FACTOR_NAMES]
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=1)


def centroid(image):
    rows, cols = np.nonzero(image[..., 0])
    return rows.mean(), cols.mean()


def test_grid_constants():
    assert shapes.NUM_IMAGES == 737_280 == int(np.prod(shapes.FACTOR_SIZES))
    assert shapes.FACTOR_NAMES == ("shape", "scale", "orientation", "pos_x", "pos_y")
    assert shapes.FACTOR_SIZES == (3, 6, 40, 32, 32)


def test_index_classes_round_trip():
    rng = np.random.default_rng(0)
    index = np.concatenate([[0, shapes.NUM_IMAGES - 1], rng.integers(0, shapes.NUM_IMAGES, 1000)])
    classes = shapes.index_to_classes(index)
    assert classes.shape == (index.size, 5)
    np.testing.assert_array_equal(classes[0], [0, 0, 0, 0, 0])
    np.testing.assert_array_equal(classes[1], np.array(shapes.FACTOR_SIZES) - 1)
    np.testing.assert_array_equal(shapes.classes_to_index(classes), index)
    # Row-major strides, as in dSprites.
    np.testing.assert_array_equal(shapes.classes_to_index(np.eye(5, dtype=int)), [245_760, 40_960, 1_024, 32, 1])
    every = shapes.index_to_classes(np.arange(shapes.NUM_IMAGES))
    assert all(np.unique(every[:, j]).size == s for j, s in enumerate(shapes.FACTOR_SIZES))


def test_classes_to_values():
    values = shapes.classes_to_values(np.array([[2, 5, 39, 31, 0], [0, 0, 0, 0, 31]]))
    np.testing.assert_allclose(values, [[2, 1.0, 2 * np.pi, 1.0, 0.0], [0, 0.5, 0.0, 0.0, 1.0]])


@pytest.mark.parametrize(
    "call",
    [
        lambda: shapes.index_to_classes(np.array([shapes.NUM_IMAGES])),
        lambda: shapes.index_to_classes(np.array([-1])),
        lambda: shapes.classes_to_index(np.array([[3, 0, 0, 0, 0]])),
        lambda: shapes.render(np.array([[0, 6, 0, 0, 0]])),
        lambda: shapes.render(np.zeros((2, 4), dtype=int)),
        lambda: shapes.render(np.zeros((2, 5))),  # floats are not classes
        lambda: shapes.ShapesData(limit=0),
        lambda: shapes.ShapesData().materialize(),
        lambda: shapes.ShapesData(limit=shapes.MAX_MATERIALIZE + 1).materialize(),
        lambda: shapes.load_shapes_splits(limit=shapes.MAX_MATERIALIZE + 1),
        lambda: shapes.load_shapes_source("some/file.npz"),
    ],
)
def test_bad_input_is_a_user_error(call):
    with pytest.raises(VaekitError):
        call()


def test_render_dtype_range_and_determinism():
    classes = shapes.sample_classes(300, np.random.default_rng(1))
    images = shapes.render(classes)
    assert images.shape == (300, 64, 64, 1) and images.dtype == np.float32
    assert set(np.unique(images)) == {0.0, 1.0}
    assert (images.sum(axis=(1, 2, 3)) > 0).all()
    np.testing.assert_array_equal(images, shapes.render(classes))
    # Rendering in pieces gives the same images as all at once.
    np.testing.assert_array_equal(images[:7], shapes.render(classes[:7]))
    np.testing.assert_array_equal(
        shapes.sample_classes(50, np.random.default_rng(3)), shapes.sample_classes(50, np.random.default_rng(3))
    )


def test_every_shape_stays_inside_the_frame():
    # Extreme positions, every scale and orientation: the outer rows/columns stay black.
    classes = grid(shape=[0, 1, 2], scale=list(range(6)), orientation=list(range(40)), pos_x=[0, 31], pos_y=[0, 31])
    images = shapes.render(classes)[..., 0]
    border = np.concatenate([images[:, 0, :], images[:, -1, :], images[:, :, 0], images[:, :, -1]], axis=1)
    assert border.max() == 0.0
    assert (images.sum(axis=(1, 2)) > 0).all()
    # The same holds for the geometry itself: largest radius + margin fits the frame.
    largest = shapes.BASE_SIZE * max(shapes.SHAPE_RADIUS)
    assert shapes.POSITION_START - largest > 1.0
    assert shapes.POSITION_START + shapes.POSITION_SPAN + largest < shapes.IMAGE_SIZE - 1.0


def test_heart_radius_bound():
    # SHAPE_RADIUS of the heart bounds the implicit curve (checked on a fine polar grid).
    angle, radius = np.meshgrid(np.linspace(0, 2 * np.pi, 721), np.linspace(0, 1.6, 801))
    inside = shapes._inside(2, radius * np.cos(angle), radius * np.sin(angle))
    assert radius[inside].max() <= shapes.SHAPE_RADIUS[2] + 0.002


def test_area_grows_with_scale():
    classes = grid(shape=[0, 1, 2], scale=list(range(6)), orientation=list(range(0, 40, 4)), pos_x=15, pos_y=15)
    area = shapes.render(classes).sum(axis=(1, 2, 3)).reshape(3, 6, 10).mean(axis=2)
    assert (np.diff(area, axis=1) > 0).all()


def test_areas_match_the_geometry():
    # Square at scale 1, orientation 0: exactly (2 * floor(10.5) + 1)^2 = 441 pixels.
    square = shapes.render(np.array([[0, 5, 0, 10, 20]]))
    assert square.sum() == shapes.expected_square_area(5) == 441
    # Over all orientations, each shape's pixel count is within 5% of its area.
    unit_area = {0: 4.0, 1: math.pi * shapes.ELLIPSE_AXES[0] * shapes.ELLIPSE_AXES[1], 2: 3.662}
    for shape_id, area in unit_area.items():
        classes = grid(shape=shape_id, scale=5, orientation=list(range(40)), pos_x=16, pos_y=16)
        counts = shapes.render(classes).sum(axis=(1, 2, 3))
        expected = area * shapes.BASE_SIZE**2
        assert np.all(np.abs(counts / expected - 1) < 0.05), (shape_id, counts.min(), counts.max(), expected)


def test_orientation_matters_but_wraps_at_two_pi():
    for shape_id in (1, 2):  # the square is symmetric under quarter turns; these are not
        a, b = shapes.render(np.array([[shape_id, 5, 0, 16, 16], [shape_id, 5, 10, 16, 16]]))
        assert (a != b).sum() > 50
    # As in dSprites, orientation classes 0 and 39 are the angles 0 and 2*pi.
    first, last = shapes.render(np.array([[2, 5, 0, 16, 16], [2, 5, 39, 16, 16]]))
    np.testing.assert_array_equal(first, last)


def test_position_moves_the_centroid():
    for shape_id in (0, 1):  # symmetric shapes: the centroid is the center, on pixel 16 + class
        images = shapes.render(grid(shape=shape_id, scale=3, orientation=7, pos_x=[0, 13, 31], pos_y=[0, 31]))
        centers = np.array([centroid(img) for img in images]).reshape(3, 2, 2)
        for x, kx in enumerate([0, 13, 31]):
            for y, ky in enumerate([0, 31]):
                np.testing.assert_allclose(centers[x, y], [16 + ky, 16 + kx], atol=1e-9)
    hearts = shapes.render(grid(shape=2, scale=5, orientation=3, pos_x=[0, 1, 20], pos_y=[0, 1, 20]))
    centers = np.array([centroid(img) for img in hearts]).reshape(3, 3, 2)
    assert (np.diff(centers[:, :, 1], axis=0) > 0.5).all()  # larger pos_x: right
    assert (np.diff(centers[:, :, 0], axis=1) > 0.5).all()  # larger pos_y: down
    assert np.abs(np.diff(centers[:, :, 0], axis=0)).max() < 1e-9  # x moves leave rows alone


def test_shapes_data_batches():
    data = shapes.ShapesData()
    assert len(data) == shapes.NUM_IMAGES
    batch = data.batch(16, np.random.default_rng(0))
    assert batch["x"].shape == (16, 64, 64, 1) and batch["x"].dtype == np.float32
    assert batch["y"].dtype == np.int32 and batch["factors"].dtype == np.int32
    np.testing.assert_array_equal(batch["y"], batch["factors"][:, 0])
    np.testing.assert_array_equal(batch["x"], shapes.render(batch["factors"]))
    again = data.batch(16, np.random.default_rng(0))
    np.testing.assert_array_equal(batch["factors"], again["factors"])


def test_limited_subset_sees_every_factor_and_materializes():
    data = shapes.ShapesData(limit=2_000, seed=5)
    np.testing.assert_array_equal(data.indices, shapes.ShapesData(limit=2_000, seed=5).indices)
    assert np.unique(data.indices).size == 2_000
    classes = shapes.index_to_classes(data.indices)
    for j, size in enumerate(shapes.FACTOR_SIZES):
        assert np.unique(classes[:, j]).size == size
    batch = data.batch(64, np.random.default_rng(0))
    assert np.isin(shapes.classes_to_index(batch["factors"]), data.indices).all()
    small = shapes.ShapesData(limit=50, seed=5)
    full = small.materialize()
    assert full["x"].shape == (50, 64, 64, 1)
    np.testing.assert_array_equal(shapes.classes_to_index(full["factors"]), small.indices)
    np.testing.assert_array_equal(full["x"], shapes.render(full["factors"]))


def test_splits_are_disjoint_and_seeded():
    train, val, test = shapes.load_shapes_splits(limit=300, seed=2, val_size=100, test_size=50)
    assert [len(s["x"]) for s in (train, val, test)] == [300, 100, 50]
    ids = [set(shapes.classes_to_index(s["factors"]).tolist()) for s in (train, val, test)]
    assert len(ids[0] | ids[1] | ids[2]) == 450
    np.testing.assert_array_equal(train["factors"], shapes.ShapesData(limit=300, seed=2).materialize()["factors"])
    # Held-out splits do not depend on limit; the seed changes everything.
    _, val_b, test_b = shapes.load_shapes_splits(limit=10, seed=2, val_size=100, test_size=50)
    np.testing.assert_array_equal(val["factors"], val_b["factors"])
    np.testing.assert_array_equal(test["x"], test_b["x"])
    _, val_c, _ = shapes.load_shapes_splits(limit=10, seed=3, val_size=100, test_size=50)
    assert not np.array_equal(val["factors"], val_c["factors"])
    source = shapes.load_shapes_source(None, val_size=20, seed=2, limit=30)
    assert [len(source[k]["y"]) for k in ("train", "val", "test")] == [30, 20, 20]


def test_whole_grid_source_holds_indices_and_renders_on_device():
    """Without a limit the training split is every grid index but the held-out ones, as records."""
    import jax.numpy as jnp

    from vaekit.data import load_data

    source = shapes.load_shapes_source(None, val_size=30, seed=4)
    train = source["train"]
    assert set(train) == {"index", "y"} and len(train["index"]) == shapes.NUM_IMAGES - 60
    held_out = shapes.classes_to_index(np.concatenate([source["val"]["factors"], source["test"]["factors"]]))
    assert np.unique(train["index"]).size == len(train["index"])
    assert not np.isin(held_out, train["index"]).any()
    np.testing.assert_array_equal(train["y"], shapes.index_to_classes(train["index"])[:, 0])
    # The device-side transform draws exactly what `render` draws for those grid points.
    rows = {k: v[:37] for k, v in train.items()}
    batch = source["train_transform"]({k: jnp.asarray(v) for k, v in rows.items()})
    assert set(batch) == {"x", "y"}
    np.testing.assert_array_equal(np.asarray(batch["x"]), shapes.render(shapes.index_to_classes(rows["index"])))
    # Through load_data: binarize modes leave the records alone; examples() renders them.
    splits = load_data("shapes", val_size=30, seed=4, binarize="static")
    assert splits.num_train == shapes.NUM_IMAGES - 60 and splits.image_shape == (64, 64, 1)
    assert splits.num_classes == 3
    ex = splits.examples("train", 5)
    np.testing.assert_array_equal(ex["x"], shapes.render(shapes.index_to_classes(train["index"][:5])))
    assert load_data("shapes", val_size=30, seed=4, limit=100).num_train == 100


def test_render_pads_to_few_shapes_without_changing_results():
    classes = shapes.sample_classes(300, np.random.default_rng(9))
    whole = shapes.render(classes)
    for n in (1, 63, 64, 65, 300):
        np.testing.assert_array_equal(shapes.render(classes[:n]), whole[:n])
