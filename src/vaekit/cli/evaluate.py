"""Commands that score a trained model: evaluate (likelihood bounds), disentanglement, quality.

Each runs one library function (`vaekit.evaluate`), shows its results as a table on stdout,
long phases as lines on stderr, and prints the JSON file the results were written to last.
"""

from __future__ import annotations

from pathlib import Path

from vaekit.cli.common import load, run_arg
from vaekit.progress import console


def _table(title: str, header: str):
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column(header, justify="right")
    return table


def _show(table, run, file_name: str) -> None:
    """The results on stdout, then the file they were written to, last."""
    console().print(table)
    print(Path(run.path) / file_name)


def _scored(args, score, label: str, **options):
    """The command's run, and `score(run, **options)` with its phases as lines on stderr."""
    run = load(args)
    err = console(stderr=True)
    return run, score(run, on_phase=lambda text: err.print(f"{label}: {text}", soft_wrap=True), **options)


def cmd_evaluate(args) -> None:
    from vaekit.evaluate import evaluate

    run = load(args)
    s = evaluate(run, split=args.split, samples=args.samples, limit=args.limit, batch_size=args.batch_size,
                 chunk=args.chunk, mc_error=args.mc_error, min_samples=args.min_samples, progress=not args.no_progress)
    draws = f"k = {s['samples']}" if not s["mc_error_target"] else \
        f"draws sized for a Monte Carlo error of {s['mc_error_target']:g} nats, {s['min_samples']} to {s['samples']}"
    table = _table(f"{run.path} ({s['split']} split, {s['examples']} examples, {draws})", "value")
    nll = "conditional NLL -log p(x|y) (nats)" if s["conditional"] else "NLL (nats)"
    if s.get("nll_is_bound"):  # an exact bound, no importance sampling
        nll = "NLL upper bound -log p(x|z_q) - log p(z_q) (nats)"
    table.add_row(f"{nll}, ± standard error over examples", f"{s['nll']:.2f} ± {s['nll_stderr']:.2f}")
    if s["nll_mc_error"] is not None:
        table.add_row("Monte Carlo sd of the NLL (nats)", f"{s['nll_mc_error']:.4f}")
        table.add_row("Monte Carlo error per example, mean / max", f"{s['mc_error_mean']:.3f} / {s['mc_error_max']:.3f}")
    if s["nll_last_doubling"] is not None:
        table.add_row("NLL from half the draws (the last doubling moved it by)",
                      f"{s['nll_half_draws']:.2f} ({s['nll_last_doubling']:+.3f})")
    if s["mc_error_target"]:
        table.add_row("draws per example, mean / max", f"{s['draws_mean']:.0f} / {s['draws_max']}")
        table.add_row("pilot draws per example (not in the estimate)", f"{s['pilot_draws_mean']:.0f}")
    table.add_row("ELBO = IWAE bound k = 1", f"{s['elbo']:.2f}")  # one estimator: the mean log weight
    for key in ("iwae_k5", "iwae_k50"):
        if key in s:
            table.add_row(f"IWAE bound k = {key[6:]}", f"{s[key]:.2f}")
    if "bits_per_dim" in s:
        table.add_row("bits per dimension", f"{s['bits_per_dim']:.4f}")
    if "active_units" in s:
        table.add_row("active units", f"{s['active_units']}/{s['latent_dim']}")
    if "perplexity" in s:  # token data
        table.add_row("NLL per word (nats, <eos> counted)", f"{s['nll_per_token']:.4f}")
        table.add_row(f"perplexity per word ({s['tokens']} words and <eos>)", f"{s['perplexity']:.2f}")
    if "kl" in s:
        table.add_row("KL(q(z|x) || p(z)) (nats)", f"{s['kl']:.2f}")
    if "reconstruction_mse" in s:
        table.add_row("reconstruction MSE per pixel", f"{s['reconstruction_mse']:.5f}")
    table.add_row("wall time (s)", f"{s['seconds']:.1f}")
    _show(table, run, "evaluation.json")


def cmd_disentanglement(args) -> None:
    from vaekit.evaluate.disentanglement import evaluate_run

    run, result = _scored(args, evaluate_run, "disentanglement", num_train=args.num_train, num_test=args.num_test,
                          seed=args.seed, n_jobs=args.n_jobs)
    table = _table(f"disentanglement of {run.path} ({args.num_train} train / {args.num_test} test codes)", "score")
    table.add_row("MIG", f"{result['mig']['mig']:.3f}")
    table.add_row("SAP", f"{result['sap']['sap']:.3f}")
    dci = result["dci"]
    table.add_row("DCI disentanglement", f"{dci['disentanglement']:.3f}")
    table.add_row("DCI completeness", f"{dci['completeness']:.3f}")
    table.add_row("DCI informativeness (test acc.)", f"{dci['informativeness_test']:.3f}")
    for name in ("factorvae", "betavae"):
        r = result[name]
        table.add_row(f"{'FactorVAE' if name == 'factorvae' else 'beta-VAE'} score (eval acc.)",
                      f"{r['eval_accuracy']:.3f}")
    table.add_row("compute time (s)", f"{sum(result['seconds'].values()):.1f}")
    _show(table, run, "disentanglement.json")


def cmd_quality(args) -> None:
    from vaekit.evaluate.quality import QUALITY_FILE, quality

    run, r = _scored(args, quality, "quality", samples=args.samples, split=args.split, reference=args.reference,
                     features_path=args.features, k=args.k)
    table = _table(f"sample quality of {run.path}", "value")
    table.add_row("FID (lower is better)", f"{r['fid']:.3f}")
    table.add_row(f"precision (k = {r['k']})", f"{r['precision']:.4f}")
    table.add_row(f"recall (k = {r['k']})", f"{r['recall']:.4f}")
    if "label_accuracy" in r:
        table.add_row("label accuracy", f"{r['label_accuracy']:.4f}")
    table.add_row("samples vs real images", f"{r['samples']:,} vs {r['reference']}")
    table.add_row("feature net", r["feature_net"])
    table.add_row("wall time (s)", f"{r['seconds']:.1f}")
    _show(table, run, QUALITY_FILE)


def register(command) -> None:
    """Add evaluate, disentanglement and quality: command(name, help) -> subparser."""
    e = command("evaluate", "importance-sampled NLL, IWAE bounds, active units; writes evaluation.json")
    run_arg(e)
    e.add_argument("--split", default="test", help="train, val or test")
    e.add_argument("--samples", type=int, default=5000, help="importance samples k per example (with --mc-error: "
                                                             "the most an example may take)")
    e.add_argument("--mc-error", type=float, default=0.0, metavar="NATS",
                   help="size each example's draws for this Monte Carlo error of its log p(x), by a pilot (default 0: "
                        "a fixed k, the papers' protocol)")
    e.add_argument("--min-samples", type=int, help="with --mc-error, the pilot's draws and the fewest an estimate "
                                                  "uses (default 100)")
    e.add_argument("--limit", type=int, help="score only the first N examples of the split (default: all)")
    e.add_argument("--batch-size", type=int, default=50, help="examples per compiled call")
    e.add_argument("--chunk", type=int, default=100, help="draws per step of the streaming logsumexp")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(func=cmd_evaluate)

    dz = command("disentanglement", "MIG, SAP, DCI, FactorVAE and beta-VAE scores (shapes runs)")
    run_arg(dz)
    dz.add_argument("--num-train", type=int, default=10_000, help="codes for MIG/SAP/DCI training")
    dz.add_argument("--num-test", type=int, default=5_000, help="codes for SAP/DCI testing")
    dz.add_argument("--seed", type=int, default=0, help="seed of the factor draws and the classifiers")
    dz.add_argument("--n-jobs", type=int, default=2, help="parallel factor fits for DCI")
    dz.set_defaults(func=cmd_disentanglement)

    q = command("quality", "FID, precision and recall of samples vs the test split (feature-net space); "
                           "writes quality.json")
    run_arg(q)
    q.add_argument("--samples", type=int, default=10_000, help="prior samples drawn")
    q.add_argument("--split", default="test", help="the real images compared against: train, val or test")
    q.add_argument("--reference", type=int, metavar="N", help="compare with only the first N images of the split "
                                                             "(default: all)")
    q.add_argument("--features", metavar="NET.npz",
                   help="your own feature net (layout: vaekit.nets.features); default: the one vaekit ships "
                        "for the run's data")
    q.add_argument("-k", type=int, default=3, help="neighbours of precision/recall (Kynkäänniemi et al. 2019)")
    q.set_defaults(func=cmd_quality)
