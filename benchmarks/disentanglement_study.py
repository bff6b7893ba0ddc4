"""A disentanglement study: beta-VAE, beta-TCVAE, FactorVAE and DIP-VAE on the shapes grid.

    python benchmarks/disentanglement_study.py                        # the full study (GPU-sized)
    python benchmarks/disentanglement_study.py --steps 30000 --seeds 5
    python benchmarks/disentanglement_study.py --reduced              # the 2-core CPU version, labelled so
    python benchmarks/disentanglement_study.py --reduced --steps 50 --seeds 1 --objectives tcvae \\
        --num-train 1000 --num-test 500 --out /tmp/study/study.md    # a smoke run

Every objective trains its preset (shapes-beta, shapes-tcvae, shapes-factorvae, shapes-dipvae: the
same conv VAE, data, batch 64 and Adam 1e-4) at each point of a small hyperparameter grid (GRID
below) with seeds 0 .. --seeds - 1, for --steps steps each, through the Python API (`vaekit.train`).
Each run is scored with `vaekit.evaluate.disentanglement.evaluate_run`, the same call as
`vaekit disentanglement` (MIG, SAP, DCI, FactorVAE score, beta-VAE score), with the run's seed.

Writes --out (default docs/disentanglement_study.md): the machine, the date, steps and batch; a
table of median [25th-75th percentile] per objective and metric over all its runs, and the same per
grid point; one latent traversal per objective (its run with the highest MIG) under images/ next
to --out. Every run's numbers go to --out with the suffix .json as they come in; with --resume, runs
already in it are not trained again (a study cut short continues where it stopped).

--reduced: the first grid point of each objective only, 3,000 steps and 3 seeds unless --steps /
--seeds say otherwise, and "reduced" in the report's title.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, cpu_info  # noqa: E402

#: objective -> (preset, [(label, --set overrides), ...]); the first point is the preset's own setting.
GRID = {
    "beta-VAE": ("shapes-beta", [("beta=4", ["objective.beta=4"]), ("beta=8", ["objective.beta=8"])]),
    "beta-TCVAE": ("shapes-tcvae", [("beta=6", ["model.beta=6"]), ("beta=10", ["model.beta=10"])]),
    "FactorVAE": ("shapes-factorvae", [("gamma=35", ["model.gamma=35"]), ("gamma=10", ["model.gamma=10"])]),
    "DIP-VAE": ("shapes-dipvae", [("I, lambda_od=10", ["model.variant=i", "model.lambda_od=10", "model.lambda_d=100"]),
                                  ("II, lambda_od=10", ["model.variant=ii", "model.lambda_od=10",
                                                        "model.lambda_d=10"])]),
}
#: --objectives names -> GRID keys
SHORT = {"betavae": "beta-VAE", "tcvae": "beta-TCVAE", "factorvae": "FactorVAE", "dipvae": "DIP-VAE"}
METRICS = [("mig", "MIG"), ("sap", "SAP"), ("dci", "DCI dis."), ("factorvae_score", "FactorVAE score"),
           ("betavae_score", "beta-VAE score"), ("val_elbo", "val ELBO")]


def machine() -> str:
    import jax

    dev = jax.devices()[0]
    if jax.default_backend() == "cpu":
        cpu = cpu_info()
        return f"{cpu['model']}, {cpu['cores']} cores (CPU)"
    return f"{getattr(dev, 'device_kind', str(dev))} ({jax.default_backend()}), {len(jax.devices())} device(s)"


def run_key(objective: str, label: str, seed: int) -> str:
    return f"{objective} | {label} | seed {seed}"


def train_and_score(objective: str, preset: str, label: str, overrides: list[str], seed: int, args, runs: Path) -> dict:
    import vaekit
    from vaekit.evaluate.disentanglement import evaluate_run, headline

    base = vaekit.resolve(preset, None, [])
    eval_every = min(base.train.eval_every, args.steps)
    cfg = vaekit.resolve(preset, None, [*overrides, f"train.steps={args.steps}", f"train.eval_every={eval_every}",
                                        f"train.seed={seed}"])
    name = f"{preset}-{label}-s{seed}".replace(" ", "").replace(",", "_").replace("=", "")
    t0 = time.perf_counter()
    run_dir = vaekit.train(cfg, runs_dir=runs, name=name, overwrite=True, progress=False)
    train_s = time.perf_counter() - t0
    run = vaekit.load_run(run_dir, checkpoint="latest")
    last = run.history[-1]
    t0 = time.perf_counter()
    print(f"{objective} {label} seed {seed}: trained in {train_s:.0f} s; scoring", flush=True)
    scores = evaluate_run(run, num_train=args.num_train, num_test=args.num_test, seed=seed, n_jobs=args.n_jobs,
                          write=False, on_phase=lambda text: print(f"  {text}", flush=True))
    row = {
        "objective": objective, "setting": label, "seed": seed, "steps": args.steps,
        "batch_size": cfg.train.batch_size, "train_seconds": round(train_s, 1),
        "score_seconds": round(time.perf_counter() - t0, 1),
        "val_elbo": last["val/elbo"], "active_units": last.get("val/active_units"),
        **headline(scores), "run_dir": str(run_dir),
    }
    # The run's traversal; the report copies each objective's best one next to itself.
    from vaekit import plots
    from vaekit.evaluate.traversal import latent_traversal

    val = run.data().examples("val", 500)
    pictures, labels, values = latent_traversal(run.model, val["x"])
    picture = run_dir / "traversal.png"
    plots.save_traversal(picture, pictures, labels, values)
    row["traversal"] = str(picture)
    return row


def quartiles(values: list[float]) -> str:
    v = np.asarray([x for x in values if x is not None], np.float64)
    if not len(v):
        return "-"
    q25, q50, q75 = np.percentile(v, [25, 50, 75])
    digits = 1 if np.max(np.abs(v)) >= 100 else 3
    return f"{q50:.{digits}f} [{q25:.{digits}f}, {q75:.{digits}f}]"


def write_report(result: dict, out: Path, images: Path) -> None:
    rows = result["runs"]
    reduced = " (REDUCED: fewer steps, seeds and grid points than the full study)" if result["reduced"] else ""
    lines = [
        f"# Disentanglement study{reduced}",
        "",
        f"Generated by `python benchmarks/disentanglement_study.py {' '.join(result['argv'])}` on {result['date']}.",
        "",
        f"- machine: {result['machine']}",
        f"- training: {result['steps']:,} steps of batch {result['batch_size']} per run, seeds "
        f"{', '.join(map(str, result['seeds']))}, on the generated shapes grid (`data.source=shapes`)",
        f"- scores: `vaekit disentanglement` (MIG, SAP and DCI on {result['num_train']:,} / {result['num_test']:,} "
        f"codes; FactorVAE and beta-VAE scores at their defaults), scoring seed = training seed",
        "- cells: median [25th percentile, 75th percentile] over the runs",
        "",
        "## Per objective (all grid points and seeds)",
        "",
        "| objective | runs | " + " | ".join(title for _, title in METRICS) + " |",
        "|---|---|" + "---|" * len(METRICS),
    ]
    objectives = list(dict.fromkeys(r["objective"] for r in rows))
    for obj in objectives:
        mine = [r for r in rows if r["objective"] == obj]
        lines.append(f"| {obj} | {len(mine)} | " + " | ".join(quartiles([r[k] for r in mine]) for k, _ in METRICS) + " |")
    lines += ["", "## Per grid point (over seeds)", "",
              "| objective | setting | runs | " + " | ".join(title for _, title in METRICS) + " |",
              "|---|---|---|" + "---|" * len(METRICS)]
    for obj in objectives:
        for setting in dict.fromkeys(r["setting"] for r in rows if r["objective"] == obj):
            mine = [r for r in rows if r["objective"] == obj and r["setting"] == setting]
            lines.append(f"| {obj} | {setting} | {len(mine)} | "
                         + " | ".join(quartiles([r[k] for r in mine]) for k, _ in METRICS) + " |")
    lines += ["", "## Traversals", "", "One per objective: its run with the highest MIG, every latent swept from -3 "
              "to 3 around one validation image's code, rows ordered by KL.", ""]
    for obj in objectives:
        best = max((r for r in rows if r["objective"] == obj), key=lambda r: r["mig"])
        target = images / f"disentanglement_study_{obj.lower().replace('-', '')}.png"
        if Path(best["traversal"]).resolve() != target.resolve():
            shutil.copy(best["traversal"], target)
        rel = os.path.relpath(target, out.parent)
        lines += [f"**{obj}** ({best['setting']}, seed {best['seed']}, MIG {best['mig']:.3f}):", "",
                  f"![{obj} traversal]({rel})", ""]
    total_train = sum(r["train_seconds"] for r in rows)
    total_score = sum(r["score_seconds"] for r in rows)
    lines += [f"Wall time: {total_train:,.0f} s training and {total_score:,.0f} s scoring for {len(rows)} runs.", ""]
    out.write_text("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default: 50,000; reduced 3,000)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 per grid point (default 3)")
    p.add_argument("--reduced", action="store_true", help="first grid point of each objective only; 3,000 steps")
    p.add_argument("--objectives", default=",".join(SHORT), help=f"comma-separated subset of {', '.join(SHORT)}")
    p.add_argument("--num-train", type=int, default=10_000, help="codes for MIG/SAP/DCI (as vaekit disentanglement)")
    p.add_argument("--num-test", type=int, default=5_000, help="test codes for SAP/DCI")
    p.add_argument("--n-jobs", type=int, default=2, help="parallel DCI factor fits")
    p.add_argument("--out", default=str(REPO_ROOT / "docs" / "disentanglement_study.md"), help="the report (markdown)")
    p.add_argument("--runs-dir", default=None, help="keep the runs here (default: a temporary folder)")
    p.add_argument("--resume", action="store_true", help="skip runs already recorded in the --out .json")
    args = p.parse_args()
    if args.steps is None:
        args.steps = 3000 if args.reduced else 50_000
    unknown = [o for o in args.objectives.split(",") if o not in SHORT]
    if unknown or args.steps <= 0 or args.seeds <= 0:
        p.error(f"--objectives takes {', '.join(SHORT)}; --steps and --seeds must be positive")

    out = Path(args.out)
    images = out.parent / "images"
    images.mkdir(parents=True, exist_ok=True)
    record = out.with_suffix(".json")
    runs = Path(args.runs_dir) if args.runs_dir else Path(tempfile.mkdtemp(prefix="vaekit-study-"))
    result = {"argv": sys.argv[1:], "date": time.strftime("%Y-%m-%d"), "machine": machine(), "steps": args.steps,
              "batch_size": 64, "seeds": list(range(args.seeds)), "reduced": args.reduced,
              "num_train": args.num_train, "num_test": args.num_test, "runs": []}
    if args.resume and record.exists():
        previous = json.loads(record.read_text())
        result["runs"] = [r for r in previous["runs"] if r["steps"] == args.steps]
    done = {run_key(r["objective"], r["setting"], r["seed"]) for r in result["runs"]}
    for short in args.objectives.split(","):
        objective = SHORT[short]
        preset, grid = GRID[objective]
        for label, overrides in grid[:1] if args.reduced else grid:
            for seed in range(args.seeds):
                if run_key(objective, label, seed) in done:
                    continue
                row = train_and_score(objective, preset, label, overrides, seed, args, runs)
                result["batch_size"] = row["batch_size"]
                result["runs"].append(row)
                record.write_text(json.dumps(result, indent=2, default=float))
                print(f"{objective} {label} seed {seed}: {row['train_seconds']:.0f} s training, val ELBO "
                      f"{row['val_elbo']:.1f}, MIG {row['mig']:.3f}, SAP {row['sap']:.3f}, DCI {row['dci']:.3f}, "
                      f"FactorVAE {row['factorvae_score']:.3f}, beta-VAE {row['betavae_score']:.3f}", flush=True)
    write_report(result, out, images)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
