"""Conditional against unconditional test NLL on MNIST: `mnist-cvae` beside `mnist-mlp` at equal epochs.

    .venv/bin/python benchmarks/conditional_nll.py                 # 30 epochs each, k = 5000, all 10,000 test images
    .venv/bin/python benchmarks/conditional_nll.py --epochs 5 --limit 1000 --samples 1000   # a quick look

Both models are the 784-200-200-50 tanh VAE with dynamic binarization and the same seed; the CVAE
also feeds the one-hot digit label to its encoder and decoder. Both are scored by `vaekit
evaluate` (k importance samples per test image, the first `--limit` test images).

Why the gap is bounded: p(x) = sum_y p(x|y) p(y) >= p(x|y_x) p(y_x) for the true label y_x, so
-log p(x|y_x) >= -log p(x) + log p(y_x) = -log p(x) - log 10 with ten equally likely classes.
Knowing the label can save at most log 10 = 2.30 nats per image under one and the same model.
The script checks that on the CVAE itself: its implied marginal p(x) = (1/10) sum_c p(x|c) (each
p(x|c) importance-sampled with q(z|x, c), k draws) against its conditional NLL. Two separately
trained models are not one model: at equal epochs the CVAE may fit better than the VAE by more
than the label's information, and that part of the gap is model fit, not the label.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--samples", type=int, default=5000)
    p.add_argument("--limit", type=int, default=None, help="score only the first N test images")
    p.add_argument("--runs-dir", default=None, help="keep the runs here (default: a temporary directory)")
    p.add_argument("--json", help="write all numbers here")
    args = p.parse_args()

    import jax

    import vaekit
    from vaekit.evaluate import evaluate

    runs = Path(args.runs_dir or tempfile.mkdtemp(prefix="vaekit-cvae-"))
    rows = {}
    for preset in ("mnist-mlp", "mnist-cvae"):
        cfg = vaekit.resolve(preset, None, [f"train.epochs={args.epochs}"])
        t0 = time.perf_counter()
        run_dir = vaekit.train(cfg, runs_dir=runs, name=f"{preset}-{args.epochs}ep", progress=False, overwrite=True)
        train_s = time.perf_counter() - t0
        result = evaluate(vaekit.load_run(run_dir), samples=args.samples, limit=args.limit, progress=False)
        rows[preset] = dict(result, train_seconds=train_s)

    # The CVAE's own marginal: -log (1/K) sum_c p(x|c), every class scored for every image.
    import numpy as np
    from scipy.special import logsumexp

    from vaekit.evaluate.likelihood import log_likelihood

    run = vaekit.load_run(runs / f"mnist-cvae-{args.epochs}ep")
    test = run.data().examples("test", args.limit)
    k_classes = run.spec.num_classes
    t0 = time.perf_counter()
    per_class = np.stack([log_likelihood(run.model, {"x": test["x"], "y": np.full(len(test["x"]), c, np.int32)},
                                         samples=args.samples)["log_px"] for c in range(k_classes)])  # (K, N)
    marginal = -(logsumexp(per_class, axis=0) - math.log(k_classes))
    rows["mnist-cvae"]["marginal_nll"] = float(marginal.mean())
    rows["mnist-cvae"]["marginal_seconds"] = time.perf_counter() - t0
    rows["mnist-cvae"]["label_accuracy"] = float(np.mean(per_class.argmax(0) == test["y"]))

    gap = rows["mnist-mlp"]["nll"] - rows["mnist-cvae"]["nll"]
    print(f"\nMNIST test NLL, {args.epochs} epochs each, k = {args.samples}, {rows['mnist-mlp']['examples']} test images, "
          f"{time.strftime('%Y-%m-%d')}, {jax.devices()[0].device_kind}")
    print(f"{'preset':<12}{'NLL (nats)':>16}{'ELBO':>10}{'IWAE k=50':>11}{'active':>8}{'train (s)':>11}{'eval (s)':>10}")
    for preset, r in rows.items():
        nll = f"{r['nll']:.2f}±{r['nll_stderr']:.2f}"
        print(f"{preset:<12}{nll:>16}{r['elbo']:>10.2f}{r['iwae_k50']:>11.2f}{r['active_units']:>8}"
              f"{r['train_seconds']:>11.0f}{r['seconds']:>10.0f}")
    cv = rows["mnist-cvae"]
    print(f"unconditional (mnist-mlp) minus conditional (mnist-cvae) NLL: {gap:.2f} nats")
    print(f"mnist-cvae's own marginal NLL -log (1/10) sum_c p(x|c): {cv['marginal_nll']:.2f} nats; its conditional "
          f"NLL is lower by {cv['marginal_nll'] - cv['nll']:.2f} nats (bound: log 10 = {math.log(10):.2f}); "
          f"argmax_c p(x|c) is the true label for {100 * cv['label_accuracy']:.1f}% of images "
          f"({cv['marginal_seconds']:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "gap": gap, "epochs": args.epochs}, indent=2))


if __name__ == "__main__":
    main()
