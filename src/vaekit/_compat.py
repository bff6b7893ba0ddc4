"""Every private name of a dependency that vaekit uses, one function each.

Each says why nothing public does the job and which versions it was checked with; each has a test
in tests/test_compat.py that fails when an upgrade moves or changes the name under it, and that
test file also checks that no other module under src/vaekit reaches into a dependency's private
names. Replace a shim here the day its dependency offers a public way.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

#: For each package with a shim: the version it was checked with, and the first version it is
#: not trusted on (tests/test_compat.py fails outside that range until someone checks again).
CHECKED = {"flax": ("0.12.8", "0.13"), "scikit-learn": ("1.9.1", "2")}


def variable_can_update(variable) -> bool:
    """Whether an NNX Variable may be updated in place in the current trace: Flax's private
    `Variable._can_update` property (checked with flax 0.12.8; pyproject allows >=0.12.8,<0.13).

    `nets.cpu_conv.batch_norm` is `nnx.BatchNorm.__call__` with faster reductions, and
    `nnx.BatchNorm` stops the gradient of its running statistics' update exactly when this flag
    holds; reading the same flag keeps the two the same function (tests/test_cpu_conv.py).
    """
    return bool(variable._can_update)


def tree_nodes(model) -> Iterator[np.ndarray]:
    """The node table of every tree of a fitted `HistGradientBoostingClassifier` (structured arrays
    with fields `is_leaf`, `feature_idx`, `gain`, ...): scikit-learn's private `_predictors`, a list
    per boosting iteration of one `TreePredictor` per class, each holding `.nodes` (checked with
    scikit-learn 1.9.1; pyproject allows >=1.5,<2).

    DCI's "gain" importance sums the split gains per feature, as GradientBoostingClassifier's
    public `feature_importances_` does; the histogram estimator has no public equivalent.
    `evaluate.disentanglement.dci` falls back to permutation importance when this raises.
    """
    for iteration in model._predictors:
        for predictor in iteration:
            yield predictor.nodes


__all__ = ["CHECKED", "tree_nodes", "variable_can_update"]
