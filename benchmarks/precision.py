"""Training step time with train.precision=fp32 and bf16, on whatever device JAX finds.

    .venv/bin/python benchmarks/precision.py [--presets mnist-mlp shapes-beta] [--steps 50] [--rounds 3]

For each preset, one compiled trainer per precision; rounds alternate between them, and each
round times one chunk of --steps steps up to the host reading its metrics (as training does).
Prints ms/step (median of the rounds) and the bf16 / fp32 speed ratio, and writes --json.
bfloat16 pays off where the matrix units take it natively (GPU tensor cores, TPU); an x86 CPU
without native bf16 matmuls converts and is expected to be slower.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_busy, cpu_info, trainer_step_timer  # noqa: E402

LIMITS = {"shapes-beta": ["data.limit=2000"], "folder-conv64": []}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["mnist-mlp", "shapes-beta"])
    p.add_argument("--steps", type=int, default=50, help="steps per timed chunk")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config overrides")
    p.add_argument("--json")
    args = p.parse_args()

    import vaekit
    import jax

    info = cpu_info()
    device = str(jax.devices()[0].device_kind)
    print(f"device: {device}; CPU: {info['model']}, {info['cores']} cores (others busy {cpu_busy():.0%})", flush=True)
    out = {"date": time.strftime("%Y-%m-%d"), "device": device, "cpu": info, "jax": jax.__version__, "results": {}}
    for preset in args.presets:
        timers = {}
        for precision in ("fp32", "bf16"):
            cfg = vaekit.resolve(preset, None, [f"train.precision={precision}", f"train.chunk_steps={args.steps}",
                                                *LIMITS.get(preset, []), *args.set])
            timers[precision] = trainer_step_timer(cfg, args.steps)
        ms: dict[str, list[float]] = {"fp32": [], "bf16": []}
        for _ in range(args.rounds):
            for precision, timer in timers.items():
                ms[precision].append(1000 * timer())
        med = {k: statistics.median(v) for k, v in ms.items()}
        out["results"][preset] = {"ms_per_step": ms, "median_ms": med, "bf16_speedup": med["fp32"] / med["bf16"]}
        print(f"{preset}: fp32 {med['fp32']:.2f} ms/step, bf16 {med['bf16']:.2f} ms/step "
              f"(bf16 speed {med['fp32'] / med['bf16']:.2f}x fp32)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
