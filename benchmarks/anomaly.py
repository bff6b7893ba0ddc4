"""Anomaly detection with vaekit's scores: the one-class MNIST protocol of Ruff et al. 2018, and
MNIST against shapes images as out-of-distribution data.

    .venv/bin/python benchmarks/anomaly.py                      # all 10 digits + the OOD case (~10 min, 2 cores)
    .venv/bin/python benchmarks/anomaly.py --digits 1 8 --no-ood --steps 1000   # a quick look

One-class protocol (Ruff et al. 2018, "Deep One-Class Classification", ICML, Section 4.1):
for each digit c, a model is trained on the training images of class c only and scores all
10,000 MNIST test images; class c is normal, the nine other classes are anomalies; the table
gives the AUROC of every vaekit score per digit and the mean over the 10 digits, next to the
baselines of that paper's Table 1. Here: the `mnist-mlp` preset (784-200-200-50 tanh VAE,
Bernoulli, dynamic binarization) trained for `--steps` optimizer steps (batch 100) on the
class's images from MNIST's 60,000 training images (the last 500 of them held out for
validation and the typicality reference), test images binarized once with the evaluation seed,
as `vaekit anomaly` does. Ruff et al. preprocess grey images with global contrast normalization
and report means of 10 seeds; this is one seed on binarized images.

Out-of-distribution case: a model trained on all of MNIST (the preset, `--ood-epochs` epochs)
scores the 10,000 MNIST test images (normal) and 2,000 shapes test images (dSprites-style,
64x64 binary, area-resized to 28x28 and binarized the same way; anomalies).

Prints one table per part and writes every number to --json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

# Ruff et al. 2018, Table 1 (MNIST one-class AUROC in %, mean over 10 seeds): OC-SVM, KDE, IF,
# DCAE, AnoGAN, soft-boundary Deep SVDD, one-class Deep SVDD, for normal digits 0..9.
RUFF_TABLE1 = {
    "OC-SVM": [98.6, 99.5, 82.5, 88.1, 94.9, 77.1, 96.5, 93.7, 88.9, 93.1],
    "KDE": [97.1, 98.9, 79.0, 86.2, 87.9, 73.8, 87.6, 91.4, 79.2, 88.2],
    "IF": [98.0, 97.3, 88.6, 89.9, 92.7, 85.5, 95.6, 92.0, 89.9, 93.5],
    "DCAE": [97.6, 98.3, 85.4, 86.7, 86.5, 78.2, 94.6, 92.3, 86.5, 90.4],
    "AnoGAN": [96.6, 99.2, 85.0, 88.7, 89.4, 88.3, 94.7, 93.5, 84.9, 92.4],
    "soft-bound. Deep SVDD": [97.8, 99.6, 89.5, 90.3, 93.8, 85.8, 98.0, 92.7, 92.9, 94.9],
    "one-class Deep SVDD": [98.0, 99.7, 91.7, 91.9, 94.9, 88.5, 98.3, 94.6, 93.9, 96.5],
}
HOLD_OUT = 500  # training images of the class kept for validation and the typicality reference


def _train(args, cfg_overrides: list[str], runs_dir: Path, name: str, reuse: bool = False):
    from vaekit import config as config_lib
    from vaekit.runs.train import train

    done = runs_dir / name / "run.json"
    if reuse and done.exists() and json.loads(done.read_text()).get("status") == "complete":
        return runs_dir / name  # --reuse: score the run trained by an earlier call

    cfg = config_lib.resolve(args.preset, None, [*cfg_overrides, *args.set])
    return train(cfg, runs_dir=runs_dir, name=name, overwrite=True, progress=False)


def _scores(run, x, normal_label, y, samples, reference):
    from vaekit.evaluate.anomaly import anomaly_scores, anomaly_targets, score_metrics

    t0 = time.perf_counter()
    scores = anomaly_scores(run.model, {"x": x}, samples=samples, reference=reference)
    metrics = score_metrics(scores, anomaly_targets(y, normal_label))
    return {k: round(100 * v["auroc"], 2) for k, v in metrics.items()}, \
        {k: round(100 * v["auprc"], 2) for k, v in metrics.items()}, time.perf_counter() - t0


def one_class(args, runs_dir: Path) -> dict:
    import numpy as np

    from vaekit.runs.run import load_run
    from vaekit.data import EVAL_BINARIZATION_SEED, binarize_fixed
    from vaekit.data.mnist import load_mnist_raw

    raw = load_mnist_raw()
    test_x = binarize_fixed(raw["test_x"][..., None].astype(np.float32) / 255.0, EVAL_BINARIZATION_SEED)
    test_y = raw["test_y"].astype(np.int32)
    out = {}
    for c in args.digits:
        t0 = time.perf_counter()
        xc = raw["train_x"][raw["train_y"] == c]
        held = xc[-HOLD_OUT:]
        path = runs_dir / f"digit{c}.npz"
        np.savez(path, x=xc[:-HOLD_OUT], x_val=held, x_test=held)
        run_dir = _train(args, [f"data.path={path}", "data.binarize=dynamic", f"train.steps={args.steps}",
                          f"train.eval_every={args.steps // 4}", f"train.seed={args.seed}"], runs_dir, f"digit{c}",
                         args.reuse)
        train_s = time.perf_counter() - t0
        run = load_run(run_dir)
        reference = {"x": run.data().val["x"]}
        auroc, auprc, score_s = _scores(run, test_x, c, test_y, args.samples, reference)
        out[c] = {"auroc": auroc, "auprc": auprc, "train_examples": int(len(xc) - HOLD_OUT),
                  "train_seconds": round(train_s, 1), "score_seconds": round(score_s, 1)}
        print(f"digit {c}: " + "  ".join(f"{k} {v:.1f}" for k, v in auroc.items())
              + f"  (train {train_s:.0f} s, score {score_s:.0f} s)", flush=True)
    return out


def ood(args, runs_dir: Path) -> dict:
    import numpy as np
    from PIL import Image

    from vaekit.runs.run import load_run
    from vaekit.data import EVAL_BINARIZATION_SEED, binarize_fixed
    from vaekit.data.shapes import load_shapes_splits

    t0 = time.perf_counter()
    run_dir = _train(args, [f"train.epochs={args.ood_epochs}", "data.binarize=dynamic", f"train.seed={args.seed}"], runs_dir, "mnist", args.reuse)
    train_s = time.perf_counter() - t0
    run = load_run(run_dir)
    splits = run.data()
    mnist = splits.test["x"]
    _, _, shapes_test = load_shapes_splits(limit=1, val_size=1, test_size=args.shapes)
    small = np.stack([np.asarray(Image.fromarray((s[..., 0] * 255).astype(np.uint8)).resize((28, 28), Image.BOX))
                      for s in shapes_test["x"]])
    shapes = binarize_fixed(small[..., None].astype(np.float32) / 255.0, EVAL_BINARIZATION_SEED)
    x = np.concatenate([mnist, shapes])
    is_ood = np.concatenate([np.zeros(len(mnist), np.int32), np.ones(len(shapes), np.int32)])
    reference = {"x": splits.val["x"][:1000]}
    auroc, auprc, score_s = _scores(run, x, None, is_ood, args.samples, reference)
    from vaekit.evaluate.anomaly import anomaly_scores

    # mean NLL of each set: do likelihood models find the OOD set *more* likely?
    nll = anomaly_scores(run.model, {"x": x}, samples=10)["nll"]
    res = {"auroc": auroc, "auprc": auprc, "mnist_nll_mean": round(float(nll[is_ood == 0].mean()), 2),
           "shapes_nll_mean": round(float(nll[is_ood == 1].mean()), 2), "shapes": int(len(shapes)),
           "train_seconds": round(train_s, 1), "score_seconds": round(score_s, 1)}
    print("MNIST vs shapes: " + "  ".join(f"{k} {v:.1f}" for k, v in auroc.items())
          + f"  (mean NLL: MNIST {res['mnist_nll_mean']}, shapes {res['shapes_nll_mean']})", flush=True)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="mnist-mlp", help="the model trained for each case (default mnist-mlp)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override after the benchmark's own (repeatable), e.g. model.latent_dim=32")
    p.add_argument("--digits", type=int, nargs="+", default=list(range(10)))
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps per one-class model (batch 100)")
    p.add_argument("--samples", type=int, default=100, help="importance samples per test image")
    p.add_argument("--ood-epochs", type=int, default=10)
    p.add_argument("--shapes", type=int, default=2000, help="shapes test images (anomalies) in the OOD case")
    p.add_argument("--no-ood", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs-dir", help="keep the runs here (default: a temporary directory)")
    p.add_argument("--reuse", action="store_true", help="score complete runs already in --runs-dir instead of "
                                                          "training them again")
    p.add_argument("--json", help="write every number here")
    args = p.parse_args()

    import vaekit  # noqa: F401  (first: its XLA settings)

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        runs_dir = Path(args.runs_dir or tmp)
        runs_dir.mkdir(parents=True, exist_ok=True)
        result = {"args": vars(args), "one_class": one_class(args, runs_dir)}
        if not args.no_ood:
            result["ood"] = ood(args, runs_dir)
    result["seconds"] = round(time.perf_counter() - t0, 1)

    oc = result["one_class"]
    names = list(next(iter(oc.values()))["auroc"])
    digits = sorted(oc)
    print("\none-class MNIST AUROC (%), normal digit per column")
    print(f"{'method':24s}" + "".join(f"{d:>7d}" for d in digits) + f"{'mean':>8s}")
    means = {}
    for n in names:
        vals = [oc[d]["auroc"][n] for d in digits]
        means[n] = sum(vals) / len(vals)
        print(f"{'vaekit ' + n:24s}" + "".join(f"{v:7.1f}" for v in vals) + f"{means[n]:8.1f}")
    for n, vals in RUFF_TABLE1.items():
        sel = [vals[d] for d in digits]
        print(f"{n + ' (Ruff)':24s}" + "".join(f"{v:7.1f}" for v in sel) + f"{sum(sel) / len(sel):8.1f}")
    result["one_class_mean_auroc"] = {k: round(v, 2) for k, v in means.items()}
    best = max(means, key=means.get)
    print(f"best vaekit score: {best}, mean AUROC {means[best]:.1f} (one-class Deep SVDD: 94.8)")
    print(f"total {result['seconds']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
