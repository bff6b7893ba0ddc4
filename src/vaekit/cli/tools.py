"""Commands that put a trained model to work: report, anomaly, embed, arithmetic, latent-map.

`register(command)` adds them to the `vaekit` parser (`vaekit.cli.parser` calls it); each
cmd_* function is a few lines over the library (vaekit.report, vaekit.evaluate.anomaly,
vaekit.evaluate.embed, vaekit.evaluate.latent). As everywhere in the CLI, a user's mistake is a one-line
`VaekitError` (exit status 2), output paths are checked before any work, and outputs are
written atomically: an error leaves no partial file behind.
"""

from __future__ import annotations

from vaekit.cli.common import load, positive, run_arg
from vaekit.errors import VaekitError
from vaekit.progress import console
from vaekit.runs.layout import check_out


def cmd_report(args) -> None:
    from vaekit.report import write_report

    print(write_report(args.runs, args.out, model=not args.no_model))


def cmd_anomaly(args) -> None:
    from rich.table import Table

    from vaekit.evaluate.anomaly import score_run, write_scores

    out = check_out(args.out, (".npz", ".csv")) if args.out else None
    if (args.data is None) == (args.split is None):
        raise VaekitError("give exactly one of --data F.npz and --split S")
    run = load(args)
    result = score_run(run, data=args.data, split=args.split, normal_label=args.normal_label, samples=args.samples,
                       limit=args.limit, typicality=not args.no_typicality, progress=not args.no_progress)
    s = result["summary"]
    if result["metrics"]:
        table = Table(title=f"anomaly detection: {run.path} on {s['source']} ({s['examples']} examples, "
                            f"{s['anomalies']} anomalous, k = {s['samples']})")
        table.add_column("score (higher: more anomalous)")
        table.add_column("AUROC", justify="right")
        table.add_column("AUPRC", justify="right")
        for name, m in result["metrics"].items():
            table.add_row(name, f"{m['auroc']:.4f}", f"{m['auprc']:.4f}")
        console().print(table)
    else:
        print(f"no labels in the data: per-example scores only ({', '.join(result['scores'])})")
    if out is not None:
        print(write_scores(out, result["scores"], result["y"], result["is_anomaly"]))


def cmd_embed(args) -> None:
    from vaekit.evaluate.embed import embed, out_kind

    out = check_out(args.out, (".npz", ".parquet"))
    out_kind(out)  # pyarrow present for .parquet, before any work
    if (args.data is None) == (args.split is None):
        raise VaekitError("give exactly one of --data F.npz and --split S")
    run = load(args)
    result = embed(run, out, data=args.data, split=args.split, limit=args.limit, batch_size=args.batch_size)
    print(f"{result['examples']} examples, latent dimension {result['latent_dim']}: {', '.join(result['keys'])}")
    print(result["path"])


def cmd_arithmetic(args) -> None:
    from vaekit.evaluate.latent import save_arithmetic

    out = check_out(args.out, (".png",))
    positive(args.n, "-n")
    run = load(args)
    alphas = tuple(float(a) for a in args.alphas.split(","))
    print(save_arithmetic(out, run, args.attribute, split=args.split, examples=args.n, alphas=alphas))


def cmd_latent_map(args) -> None:
    from vaekit.evaluate.latent import save_latent_map

    out = check_out(args.out, (".png",))
    if not 2 <= args.n <= 64:
        raise VaekitError(f"-n must be in 2..64, got {args.n}")
    run = load(args)
    print(save_latent_map(out, run, n=args.n, label=args.label))


def _parse_alphas(text: str) -> str:
    try:
        [float(a) for a in text.split(",")]
    except ValueError:
        import argparse

        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got '{text}'") from None
    return text


def register(command) -> None:
    """Add report, anomaly, embed, arithmetic and latent-map: command(name, help) -> subparser."""

    def data_args(sp):
        sp.add_argument("--data", metavar="F.npz", help="an .npz with 'x' shaped like the run's data (and 'y')")
        sp.add_argument("--split", help="train, val or test of the run's own data")
        sp.add_argument("--limit", type=int, help="only the first N examples")

    rp = command("report", "a self-contained HTML report of a run, or a comparison of several runs")
    rp.add_argument("runs", nargs="+", metavar="RUN", help="run directories (several: a comparison)")
    rp.add_argument("--out", help="the HTML file (default: RUN/report.html; several runs: compare.html)")
    rp.add_argument("--no-model", action="store_true",
                    help="skip the pictures that need the model (interpolations, traversal, codes, linear probe)")
    rp.set_defaults(func=cmd_report)

    an = command("anomaly", "per-example anomaly scores; with labels, AUROC and AUPRC of each score")
    run_arg(an)
    data_args(an)
    an.add_argument("--normal-label", type=int, metavar="C",
                    help="y holds class labels: class C is normal, every other class anomalous "
                         "(default: y is 1 for an anomaly, 0 for a normal example)")
    an.add_argument("--samples", type=int, default=100, metavar="K",
                    help="importance samples per example for the NLL and -ELBO scores")
    an.add_argument("--out", default="scores.npz", help="per-example scores, .npz or .csv")
    an.add_argument("--no-typicality", action="store_true",
                    help="skip the typicality score (it scores up to 1,000 validation examples as reference)")
    an.add_argument("--no-progress", action="store_true", help="no progress bar")
    an.set_defaults(func=cmd_anomaly)

    em = command("embed", "posterior means and scales (+ labels) of a split or an .npz, "
                                      "to .npz or .parquet")
    run_arg(em)
    data_args(em)
    em.add_argument("--out", required=True, help="codes.npz or codes.parquet (Parquet needs pyarrow)")
    em.add_argument("--batch-size", type=int, default=1024, help="examples encoded per step")
    em.set_defaults(func=cmd_embed)

    ar = command("arithmetic", "add an attribute vector mean(z|y=A) - mean(z) to codes of other classes")
    run_arg(ar)
    ar.add_argument("--attribute", type=int, required=True, metavar="A", help="the label whose vector is added")
    ar.add_argument("--split", default="test", help="the labelled split the vector and the examples come from")
    ar.add_argument("-n", type=int, default=8, help="examples (rows)")
    ar.add_argument("--alphas", type=_parse_alphas, default="0,0.5,1,1.5,2",
                    help="multiples of the vector added, comma-separated")
    ar.add_argument("--out", default="arithmetic.png", help="output .png")
    ar.set_defaults(func=cmd_arithmetic)

    lm = command("latent-map", "decode a grid over a 2-D latent space (model.latent_dim=2)")
    run_arg(lm)
    lm.add_argument("-n", type=int, default=20, help="grid points per axis")
    lm.add_argument("--label", type=int, help="the class to decode under (conditional runs)")
    lm.add_argument("--out", default="latent_map.png", help="output .png")
    lm.set_defaults(func=cmd_latent_map)

