"""How fast `vaekit evaluate` scores a run, against the machine's matmul limit, and what --mc-error buys.

    .venv/bin/python benchmarks/nll_speed.py --run runs/<mnist-mlp run>                       # k = 5000, all 10,000 test images
    .venv/bin/python benchmarks/nll_speed.py --run runs/<mnist-conv run> --limit 500 --mc-error 0.3 0.05

For each setting it runs `vaekit.evaluate.evaluate` (the library call behind the command) and
reports its wall time, NLL with its standard error over examples, the Monte Carlo sd of that NLL,
the NLL from the first half of every example's draws (what the last doubling of k moved it by),
and the draws per example. For an MLP decoder it also counts the decoder's matmul
FLOPs (k draws x examples x 2 x the layer products) and divides by the 2048^3 float32 matmul rate
measured in the same process: the share of the machine's limit the estimate runs at, and the
seconds the decoder's matmuls alone would take at that rate (the floor for a fixed k). Writes a JSON
with every number to --json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import vaekit.runtime  # noqa: E402

vaekit.runtime.configure()  # the CLI's CPU settings, before JAX starts

from common import cpu_info, matmul_flops_per_s  # noqa: E402


def decoder_flops_per_draw(run) -> int | None:
    """Matmul FLOPs of one decoder pass of an MLP run (latent -> hidden... -> data), else None."""
    cfg = run.config.model
    if cfg.net != "mlp":
        return None
    sizes = [cfg.latent_dim, *reversed(cfg.hidden), math.prod(run.spec.shape)]
    return sum(2 * a * b for a, b in zip(sizes, sizes[1:]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a trained run directory")
    p.add_argument("--samples", type=int, default=5000, help="k (the cap with --mc-error)")
    p.add_argument("--limit", type=int, help="first N test images (default: all)")
    p.add_argument("--mc-error", type=float, nargs="*", default=[], help="also these --mc-error targets (nats)")
    p.add_argument("--no-fixed", action="store_true", help="skip the fixed-k evaluation")
    p.add_argument("--json", default="nll_speed.json")
    args = p.parse_args()

    from vaekit.evaluate.likelihood import evaluate
    from vaekit.runs.run import load_run

    run = load_run(args.run)
    rate = matmul_flops_per_s()
    flops = decoder_flops_per_draw(run)
    out = {"run": str(args.run), "cpu": cpu_info(), "date": time.strftime("%Y-%m-%d"), "matmul_gflops": rate / 1e9,
           "decoder_mflop_per_draw": flops / 1e6 if flops else None, "results": []}
    print(f"2048^3 float32 matmul: {rate / 1e9:.0f} GFLOP/s" + (f"; decoder {flops / 1e6:.3f} MFLOP per draw" if flops else ""))
    targets = ([] if args.no_fixed else [0.0]) + list(args.mc_error)
    for target in targets:
        s = evaluate(run, samples=args.samples, limit=args.limit, mc_error=target, progress=False, write=False)
        draws = s["draws_mean"] * s["examples"]
        row = {"mc_error_target": target, "seconds": s["seconds"], "examples": s["examples"], "nll": s["nll"],
               "nll_stderr": s["nll_stderr"], "nll_mc_error": s["nll_mc_error"], "nll_half_draws": s["nll_half_draws"],
               "nll_last_doubling": s["nll_last_doubling"],
               "mc_error_mean": s["mc_error_mean"], "draws_mean": s["draws_mean"], "draws_max": s["draws_max"]}
        if flops:
            row["decoder_tflop"] = draws * flops / 1e12
            row["share_of_matmul_rate"] = draws * flops / s["seconds"] / rate
            row["matmul_floor_seconds"] = draws * flops / rate
        out["results"].append(row)
        half = "n/a (single chunks)" if s["nll_half_draws"] is None else f"{s['nll_half_draws']:.3f}"
        extra = (f", {row['share_of_matmul_rate']:.0%} of the matmul rate (its matmuls alone: "
                 f"{row['matmul_floor_seconds']:.0f} s)") if flops else ""
        print(f"mc-error {target:g}: {s['seconds']:.1f} s for {s['examples']:,} examples, NLL {s['nll']:.3f} "
              f"± {s['nll_stderr']:.3f} (MC sd {s['nll_mc_error']:.4f}, half the draws {half}), "
              f"draws mean {s['draws_mean']:.0f} max {s['draws_max']}{extra}", flush=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(args.json)


if __name__ == "__main__":
    main()
