"""MIG (and the other disentanglement scores) of one shapes run against training steps.

    .venv/bin/python benchmarks/mig_curve.py --preset shapes-tcvae --steps 20000 --every 2500 \
        --json mig_curve.json --plot docs/images/mig_curve.png

Trains one run of --preset with `vaekit train`, stopping every --every steps, scores its latest
checkpoint with `vaekit.evaluate.disentanglement.evaluate_run` (MIG, SAP, DCI, FactorVAE and
beta-VAE scores, as `vaekit disentanglement` computes them), and continues it with
`vaekit train --resume RUN --set train.steps=<next>`. With train.steps the batches are drawn
per global step, so the stops change nothing in the training: the curve is that of one
uninterrupted run. Prints one row per point and writes every number to --json and the curve
to --plot.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_info, timed_command  # noqa: E402

VAEKIT = [sys.executable, "-m", "vaekit.cli"]
METRICS = ("mig", "sap", "dci", "factorvae_score", "betavae_score")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="shapes-tcvae")
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--every", type=int, default=2_500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--runs-dir", default=None)
    p.add_argument("--json")
    p.add_argument("--plot")
    args = p.parse_args()

    import vaekit  # noqa: F401  (first: its XLA settings)
    import jax

    from vaekit.runs.run import load_run
    from vaekit.evaluate.disentanglement import evaluate_run, headline

    runs = Path(args.runs_dir or tempfile.mkdtemp(prefix="vaekit-mig-curve-"))
    run = runs / "curve"
    info = cpu_info()
    device = str(jax.devices()[0].device_kind)
    print(f"{args.preset}, seed {args.seed}, to {args.steps:,} steps; device {device}; CPU {info['model']}", flush=True)
    points, train_s = [], 0.0
    for step in range(args.every, args.steps + 1, args.every):
        if step == args.every:  # a new run; later points resume it with train.steps raised
            start = ["--preset", args.preset, "--runs-dir", str(runs), "--name", "curve"]
            sets = [f"train.eval_every={args.every}", f"train.seed={args.seed}", *args.set]
        else:
            start, sets = ["--resume", str(run)], []
        sets.append(f"train.steps={step}")
        overrides = [a for s in sets for a in ("--set", s)]
        train_s += timed_command([*VAEKIT, "train", *start, *overrides, "--no-progress"])
        t0 = time.perf_counter()
        scores = headline(evaluate_run(load_run(run, checkpoint="latest"), seed=args.seed, write=False))
        points.append({"step": step, "train_seconds": round(train_s, 1),
                       "score_seconds": round(time.perf_counter() - t0, 1), **scores})
        print(f"step {step:>7,}  " + "  ".join(f"{k} {v:.3f}" for k, v in scores.items())
              + f"  (trained {train_s:.0f} s)", flush=True)
    result = {"date": time.strftime("%Y-%m-%d"), "preset": args.preset, "seed": args.seed, "set": args.set,
              "device": device, "cpu": info, "jax": jax.__version__, "points": points}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.6))
        steps = [pt["step"] for pt in points]
        for k in METRICS:
            ax.plot(steps, [pt[k] for pt in points], marker="o", label=k)
        ax.axhline(0.35, color="grey", ls="--", lw=0.8, label="MIG target 0.35")
        ax.set_xlabel("training steps")
        ax.set_ylabel("score")
        ax.set_title(f"{args.preset}, seed {args.seed} ({device})", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)


if __name__ == "__main__":
    main()
