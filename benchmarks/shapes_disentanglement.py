"""`shapes-beta` at several beta: disentanglement scores, traversals and metric compute time.

    python benchmarks/shapes_disentanglement.py --betas 1,4,8 --steps 20000 --out-dir shapes-bench
    python benchmarks/shapes_disentanglement.py --steps auto --train-budget 300   # fit a time budget

Each beta trains the `shapes-beta` preset (the disentanglement literature's conv VAE, batch 64,
Adam 1e-4) on the whole generated grid for the same number of steps and seed, then scores it with
`vaekit.evaluate.disentanglement.evaluate_run` (MIG, SAP, DCI, FactorVAE and beta-VAE scores on
10,000 / 5,000 codes; the same call as `vaekit disentanglement`) and draws its latent traversal.
`--steps auto` first times the training step on this machine and picks the largest multiple of
`--eval-every` that fits `--train-budget` seconds of training for all betas together.

Writes, under --out-dir: results.json (every number below, plus the machine) and
traversal_beta<B>.png per beta. Prints a markdown table to paste into docs/results.md, beside
the range Locatello et al. (2019) report for beta-VAE on dSprites (MIG roughly 0.05-0.35).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import seconds_per_step  # noqa: E402


def machine() -> dict:
    import jax

    dev = jax.devices()[0]
    return {"backend": jax.default_backend(), "device": getattr(dev, "device_kind", str(dev)),
            "cpus": os.cpu_count(), "platform": platform.platform(), "jax": jax.__version__}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--betas", default="1,4,8")
    p.add_argument("--steps", default="auto", help="training steps per beta, or 'auto' (see --train-budget)")
    p.add_argument("--train-budget", type=float, default=300.0, help="seconds of training for all betas (auto)")
    p.add_argument("--max-steps", type=int, default=300_000, help="cap of auto steps (the literature's 300k)")
    p.add_argument("--eval-every", type=int, default=5000)
    p.add_argument("--chunk-steps", type=int, default=None, help="train.chunk_steps (default: the preset's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-train", type=int, default=10_000)
    p.add_argument("--num-test", type=int, default=5_000)
    p.add_argument("--n-jobs", type=int, default=2, help="parallel DCI factor fits")
    p.add_argument("--out-dir", default="shapes-bench")
    p.add_argument("--runs-dir", default=None, help="keep the runs here (default: a temporary folder)")
    args = p.parse_args()

    import vaekit
    from vaekit import plots
    from vaekit.evaluate.disentanglement import evaluate_run
    from vaekit.evaluate.traversal import latent_traversal

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = Path(args.runs_dir) if args.runs_dir else Path(tempfile.mkdtemp(prefix="vaekit-shapes-"))
    betas = [float(b) for b in args.betas.split(",")]
    base = [f"train.seed={args.seed}", f"train.eval_every={args.eval_every}"]
    if args.chunk_steps:
        base.append(f"train.chunk_steps={args.chunk_steps}")
    result = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "runs": []}

    if args.steps == "auto":
        cfg = vaekit.resolve("shapes-beta", None, base)
        rate = 1.0 / seconds_per_step(cfg, cfg.train.chunk_steps)
        steps = int(rate * args.train_budget / len(betas)) // args.eval_every * args.eval_every
        steps = max(args.eval_every, min(args.max_steps, steps))
        print(f"{rate:.0f} steps/s measured: {steps} steps per beta", flush=True)
        result["measured_steps_per_s"] = rate
    else:
        steps = int(args.steps)
    result["steps"] = steps

    for beta in betas:
        cfg = vaekit.resolve("shapes-beta", None, [*base, f"train.steps={steps}", f"objective.beta={beta}"])
        t0 = time.perf_counter()
        run_dir = vaekit.train(cfg, runs_dir=runs, name=f"beta{beta:g}", progress=False)
        train_s = time.perf_counter() - t0
        run = vaekit.load_run(run_dir, checkpoint="latest")
        last = run.history[-1]
        # Record the training numbers before scoring, so a run cut short still leaves them.
        result.setdefault("trained", []).append({"beta": beta, "steps": steps, "train_seconds": round(train_s, 1),
                                                 "val_elbo": last["val/elbo"], "val_kl": last["val/kl"]})
        (out / "results.json").write_text(json.dumps(result, indent=2, default=float))
        scores = evaluate_run(run, num_train=args.num_train, num_test=args.num_test, seed=args.seed,
                              n_jobs=args.n_jobs)
        val = run.data().examples("val", 1000)
        images, labels, values = latent_traversal(run.model, val["x"], val.get("y"))
        picture = out / f"traversal_beta{beta:g}.png"
        plots.save_traversal(picture, images, labels, values)
        row = {
            "beta": beta, "steps": steps, "train_seconds": round(train_s, 1),
            "val_elbo": last["val/elbo"], "val_kl": last["val/kl"], "active_units": last["val/active_units"],
            "mig": scores["mig"]["mig"], "sap": scores["sap"]["sap"],
            "dci_disentanglement": scores["dci"]["disentanglement"], "dci_completeness": scores["dci"]["completeness"],
            "dci_informativeness": scores["dci"]["informativeness_test"],
            "factorvae": scores["factorvae"].get("eval_accuracy"), "betavae": scores["betavae"].get("eval_accuracy"),
            "metric_seconds": scores["seconds"], "traversal": picture.name, "scores": scores,
        }
        result["runs"].append(row)
        (out / "results.json").write_text(json.dumps(result, indent=2, default=float))
        print(f"beta {beta:g}: {train_s:.0f} s training, val ELBO {row['val_elbo']:.1f}, MIG {row['mig']:.3f}, "
              f"SAP {row['sap']:.3f}, DCI {row['dci_disentanglement']:.3f}, FactorVAE {row['factorvae']:.3f}, "
              f"beta-VAE {row['betavae']:.3f}, metrics {sum(scores['seconds'].values()):.0f} s", flush=True)

    best = max(result["runs"], key=lambda r: r["mig"])
    shutil.copy(out / best["traversal"], out / "traversal_best.png")
    result["best_by_mig"] = best["beta"]
    (out / "results.json").write_text(json.dumps(result, indent=2, default=float))
    m = result["machine"]
    print(f"\nshapes-beta, {steps} steps of batch 64 per beta, seed {args.seed}, {m['device']} ({m['backend']}), "
          f"{result['date']}; scores on {args.num_train:,}/{args.num_test:,} codes")
    print("| beta | val ELBO | active units | MIG | SAP | DCI dis. | DCI comp. | DCI info. | FactorVAE | beta-VAE "
          "| train s | metrics s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in result["runs"]:
        print(f"| {r['beta']:g} | {r['val_elbo']:.1f} | {r['active_units']}/10 | {r['mig']:.3f} | {r['sap']:.3f} "
              f"| {r['dci_disentanglement']:.3f} | {r['dci_completeness']:.3f} | {r['dci_informativeness']:.3f} "
              f"| {r['factorvae']:.3f} | {r['betavae']:.3f} | {r['train_seconds']:.0f} "
              f"| {sum(r['metric_seconds'].values()):.0f} |")
    print(f"best by MIG: beta {best['beta']:g} (traversal_best.png)")


if __name__ == "__main__":
    main()
