"""What `vaekit evaluate` costs per preset at the default k = 5000 on this machine, before training anything.

    .venv/bin/python benchmarks/nll_cost.py                     # every MNIST and shapes preset with an NLL
    .venv/bin/python benchmarks/nll_cost.py mnist-mlp mnist-conv

Builds each preset's model (untrained: the cost of a call does not depend on the weights), scores
random images of the preset's shape with `log_likelihood` and reads the price the estimator itself
logs after its second call (seconds per call of 50 examples x 100 draws), then extrapolates to the
whole test split at k = 5000. That is the number docs/evaluation.md lists; `nll_speed.py` measures
whole evaluations of trained runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import vaekit.runtime  # noqa: E402

vaekit.runtime.configure()  # the CLI's CPU settings, before JAX starts

SHAPES = {"mnist": ((28, 28, 1), 10_000), "shapes": ((64, 64, 1), 2_000)}  # image shape, test-split size (default)


class _Price(logging.Handler):
    """Keeps the seconds per call of the estimator's cost line."""

    def __init__(self):
        super().__init__()
        self.seconds = None

    def emit(self, record):
        self.seconds = getattr(record, "seconds_per_call", self.seconds)  # the `extra` of the cost line


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("presets", nargs="*", help="preset names (default: every mnist and shapes preset with an NLL)")
    p.add_argument("--json", default="nll_cost.json")
    args = p.parse_args()

    import numpy as np
    from flax import nnx

    from vaekit.config import list_presets, load_preset, resolve
    from vaekit.data.spec import DataSpec
    from vaekit.errors import VaekitError
    from vaekit.evaluate.likelihood import log_likelihood
    from vaekit.models import build_model

    price = _Price()
    logging.getLogger("vaekit").addHandler(price)
    logging.getLogger("vaekit").setLevel(logging.INFO)
    rows = []
    for name in args.presets or list_presets():
        if load_preset(name).get("data", {}).get("source", "mnist") not in SHAPES:
            continue  # folder and text presets: their own data
        try:
            cfg = resolve(name)
            shape, test_size = SHAPES[cfg.data.source]
            model = build_model(cfg, DataSpec("images", shape, num_classes=10), rngs=nnx.Rngs(params=0))
        except VaekitError as e:  # a preset that needs another run (a stage-2 prior): say so and go on
            print(f"{name}: skipped ({e})", flush=True)
            continue
        if model.capabilities.log_weights != "sampled" or not model.capabilities.likelihood_bound:
            continue
        model.eval()
        data = {"x": (np.random.default_rng(0).random((200, *shape)) > 0.5).astype(np.float32)}
        if model.capabilities.conditional:
            data["y"] = np.zeros(200, np.int32)
        price.seconds = None
        log_likelihood(model, data, samples=300, chunk=100, batch_size=50)
        per_call = price.seconds
        total = per_call * test_size * 5000 / (50 * 100)
        rows.append({"preset": name, "kind": cfg.model.kind, "net": cfg.model.net, "seconds_per_call": per_call,
                     "test_examples": test_size, "k5000_test_seconds": total})
        print(f"{name:22s} {cfg.model.kind:10s} {per_call * 1e3:8.1f} ms per 50 x 100 draws -> k = 5000 on "
              f"{test_size:,} test images: {total / 60:7.1f} min", flush=True)
    Path(args.json).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=1))
    print(args.json)


if __name__ == "__main__":
    main()
