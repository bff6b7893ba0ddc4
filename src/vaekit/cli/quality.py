"""`vaekit quality RUN`: FID, precision and recall of a run's samples against the test split, in
a feature net's space (`vaekit.evaluate.quality`). `register(command, run_arg)` adds it to the
parser (cli.build_parser calls it), as `cli_tools.register` does for its commands."""

from __future__ import annotations


def cmd_quality(args) -> None:
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from vaekit.runs.run import load_run
    from vaekit.evaluate.quality import QUALITY_FILE, quality

    run = load_run(args.run, checkpoint=args.checkpoint)
    err = Console(stderr=True, highlight=False)
    r = quality(run, samples=args.samples, split=args.split, reference=args.reference, features_path=args.features,
                k=args.k,
                on_phase=lambda text: err.print(f"quality: {text}", soft_wrap=True))
    table = Table(title=f"sample quality of {run.path}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("FID (lower is better)", f"{r['fid']:.3f}")
    table.add_row(f"precision (k = {r['k']})", f"{r['precision']:.4f}")
    table.add_row(f"recall (k = {r['k']})", f"{r['recall']:.4f}")
    if "label_accuracy" in r:
        table.add_row("label accuracy", f"{r['label_accuracy']:.4f}")
    table.add_row("samples vs real images", f"{r['samples']:,} vs {r['reference']}")
    table.add_row("feature net", r["feature_net"])
    table.add_row("wall time (s)", f"{r['seconds']:.1f}")
    Console(highlight=False).print(table)
    print(Path(run.path) / QUALITY_FILE)


def register(command, run_arg) -> None:
    """Add `quality` with `vaekit.cli`'s helpers: command(name, help) -> subparser, run_arg(subparser)."""
    q = command("quality", "FID, precision and recall of samples vs the test split (feature-net space); "
                           "writes quality.json")
    run_arg(q)
    q.add_argument("--samples", type=int, default=10_000, help="prior samples drawn")
    q.add_argument("--split", default="test", help="the real images compared against: train, val or test")
    q.add_argument("--reference", type=int, metavar="N", help="compare with only the first N images of the split "
                                                             "(default: all)")
    q.add_argument("--features", metavar="NET.npz",
                   help="your own feature net (layout: vaekit.evaluate.features); default: the one vaekit ships "
                        "for the run's data")
    q.add_argument("-k", type=int, default=3, help="neighbours of precision/recall (Kynkäänniemi et al. 2019)")
    q.set_defaults(func=cmd_quality)


__all__ = ["cmd_quality", "register"]
