"""vaekit._compat: each private name of a dependency that vaekit uses still exists and still means
what the shim assumes in the installed versions (an upgrade that moves one fails here, loudly),
the checkpoint check still reads what Orbax writes, and no other module reaches a private name."""

import ast
import inspect
import re
import shutil
from importlib.metadata import version
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from sklearn.ensemble import HistGradientBoostingClassifier

import vaekit
from vaekit import _compat
from vaekit.runs.checkpoint import Checkpointer, unreadable

SRC = Path(vaekit.__file__).parent


def _release(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.match(r"\d+(\.\d+)*", text).group(0).split("."))


@pytest.mark.parametrize("package", sorted(_compat.CHECKED))
def test_installed_versions_are_in_the_checked_range(package):
    """A version outside the range: check the shims (the tests below), then widen CHECKED."""
    low, high = _compat.CHECKED[package]
    assert _release(low) <= _release(version(package)) < _release(high), \
        f"{package} {version(package)} is outside [{low}, {high}): re-check vaekit._compat"


def test_variable_can_update_is_the_flag_batch_norm_reads():
    source = inspect.getsource(nnx.BatchNorm.__call__)
    assert "self.mean._can_update or self.var._can_update" in source  # the rule cpu_conv.batch_norm mirrors
    v = nnx.BatchStat(jnp.zeros(3))
    assert _compat.variable_can_update(v) is True
    # Seen from another trace level (a raw jax transform closing over it), it may not be updated.
    assert jax.jit(lambda: jnp.asarray(_compat.variable_can_update(v)))().item() is False


def test_tree_nodes_hold_the_split_gains():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    for classes in (2, 3):
        y = np.digitize(x[:, 1], np.quantile(x[:, 1], np.linspace(0, 1, classes + 1)[1:-1]))  # only feature 1 matters
        model = HistGradientBoostingClassifier(max_iter=5, max_depth=2, random_state=0).fit(x, y)
        trees = list(_compat.tree_nodes(model))
        assert len(trees) == model.n_iter_ * (1 if classes == 2 else classes)  # one tree per class and iteration
        gain = np.zeros(3)
        for nodes in trees:
            assert {"is_leaf", "feature_idx", "gain"} <= set(nodes.dtype.names)
            split = nodes["is_leaf"] == 0
            gain += np.bincount(nodes["feature_idx"][split], weights=nodes["gain"][split], minlength=3)
        assert gain[1] > 0 and gain[1] > 10 * max(gain[0], gain[2])


def test_the_checkpoint_check_reads_every_array_orbax_writes(tmp_path):
    """runs.checkpoint.unreadable reads arrays through public TensorStore drivers; if Orbax stopped
    writing zarr arrays into OCDBT, it would read nothing and find nothing: a damaged array must be found."""
    ckpt = Checkpointer(tmp_path, keep=1, asynchronous=False)
    tree = {"a": np.arange(3000, dtype=np.float32), "b": {"c": np.ones((20, 30), np.float32)}}
    ckpt.save("best", 1, {"model": tree})
    ckpt.close()
    item = tmp_path / "checkpoints" / "best" / "1" / "model"
    assert (item / "manifest.ocdbt").is_file() and unreadable(item) is None
    for damage in ("truncate", "remove"):
        copy = tmp_path / damage
        shutil.copytree(item, copy)
        data = max((p for p in copy.rglob("*") if p.is_file() and "/d/" in str(p)), key=lambda p: p.stat().st_size)
        data.write_bytes(data.read_bytes()[:20]) if damage == "truncate" else data.unlink()
        assert unreadable(copy).startswith(f"cannot read array 'a' from {copy}")


# --------------------------------------------------------------------------- nothing private elsewhere

DEPENDENCIES = {"jax", "jaxlib", "flax", "optax", "orbax", "tensorstore", "sklearn", "grain", "threading", "atexit"}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_uses(source: str) -> set[str]:
    """"module._name" for each private name of a dependency that `source` imports or reads: from an
    import, an attribute of a name bound to a dependency, or a getattr/hasattr/setattr of a "_name"."""
    tree = ast.parse(source)
    bound = {}  # local name -> the dependency it was imported from
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in DEPENDENCIES:
                    bound[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
                    if any(_private(part) for part in a.name.split(".")):
                        found.add(a.name)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in DEPENDENCIES:
            for a in node.names:
                bound[a.asname or a.name] = f"{node.module}.{a.name}"
                if any(_private(p) for p in node.module.split(".")) or _private(a.name):
                    found.add(f"{node.module}.{a.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in bound:
                found.add(f"{bound[root.id]}.{node.attr}")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "hasattr", "setattr") and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
              and _private(node.args[1].value)):
            owner = node.args[0].id if isinstance(node.args[0], ast.Name) else ast.unparse(node.args[0])
            found.add(f"{bound.get(owner, owner)}.{node.args[1].value}")
    return found


def test_the_scan_finds_each_way_of_reaching_a_private_name():
    source = ("import jax\nfrom orbax.checkpoint._src import asyncio_utils\nimport threading as th\n"
              "from sklearn.ensemble import HistGradientBoostingClassifier as H\n"
              "jax._src.core.x\nth._shutdown()\ngetattr(layer.mean, '_can_update')\nH._predictors\n"
              "jax.numpy.zeros(3)\nself._own\n")
    assert private_uses(source) == {"orbax.checkpoint._src.asyncio_utils", "jax._src", "threading._shutdown",
                                    "layer.mean._can_update", "sklearn.ensemble.HistGradientBoostingClassifier._predictors"}


def test_only_compat_reaches_into_a_dependency():
    uses = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel == "_compat.py":
            continue
        found = private_uses(path.read_text(encoding="utf-8"))
        if found:
            uses[rel] = sorted(found)
    assert not uses, f"private names of dependencies outside vaekit/_compat.py: {uses}"
