"""Whole-run wall time: `vaekit train` against Pythae's whole script, cold and warm, in one run.

    .venv/bin/python benchmarks/whole_run.py [--epochs 10] [--rounds 2] [--json out.json]

What a user waits for, from the command to the prompt: interpreter start, imports, data loading,
compilation, training, validation every epoch, checkpoints, pictures.

* vaekit: `vaekit train --preset mnist-mlp --set train.epochs=N --set data.binarize=static`
  (static binarization, as Pythae's trainer needs a fixed data set), as a subprocess.
  "cold": JAX's persistent compilation cache in an empty folder (XDG_CACHE_HOME), so every step is
  compiled; "warm": the same folder on the next round, as on a user's second run.
* Pythae: `benchmarks/peers/pythae_mnist.py --epochs N` in `.venv-bench` as a subprocess (the same
  architecture and data; its own trainer, validation every epoch, its own checkpoints), whole
  wall time. Pythae has no compilation to cache, so it has no cold/warm distinction.
* The short run of the speed issue: `vaekit train --set train.epochs=1 --set data.limit=1000`,
  cold and warm.

Rounds alternate the commands so that a disturbance of the shared machine hits all of them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PEER_SCRIPT, cpu_busy, cpu_info, peer_command, timed_command  # noqa: E402

VAEKIT = [sys.executable, "-m", "vaekit.cli"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2, help="rounds of every command (the first vaekit run of each is cold)")
    p.add_argument("--skip-peer", action="store_true")
    p.add_argument("--json")
    args = p.parse_args()
    info = cpu_info()
    print(f"CPU: {info['model']}, {info['cores']} cores (others busy {cpu_busy():.0%} before the run)", flush=True)
    work = Path(tempfile.mkdtemp(prefix="vaekit-whole-run-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION", "VAEKIT_COMPILATION"))}
    env["XDG_CACHE_HOME"] = str(work / "cache")  # empty: the first round compiles everything
    results: dict[str, list[float]] = {"vaekit_full": [], "vaekit_short": [], "pythae_full": []}
    for r in range(args.rounds):
        full = [*VAEKIT, "train", "--preset", "mnist-mlp", "--set", f"train.epochs={args.epochs}", "--set",
                "data.binarize=static", "--runs-dir", str(work / "runs"), "--name", f"full{r}", "--no-progress"]
        short = [*VAEKIT, "train", "--set", "train.epochs=1", "--set", "data.limit=1000", "--runs-dir",
                 str(work / "runs"), "--name", f"short{r}", "--no-progress"]
        results["vaekit_full"].append(timed_command(full, env))
        results["vaekit_short"].append(timed_command(short, env))
        if not args.skip_peer:
            peer, peer_env = peer_command(PEER_SCRIPT, ["--epochs", str(args.epochs), "--quiet",
                                                        "--json", str(work / f"peer{r}.json")])
            results["pythae_full"].append(timed_command(peer, peer_env))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in results.items() if v), flush=True)

    def cell(name: str, which: str) -> str:
        v = results[name]
        if not v:
            return "-"
        if which == "cold":
            return f"{v[0]:.1f}"
        return f"{statistics.median(v[1:]):.1f}" if len(v) > 1 else "-"

    print(f"\nwhole-run wall time (s), {time.strftime('%Y-%m-%d')}, {info['model']}")
    print("| command | cold | warm (median of later rounds) |")
    print("| --- | ---: | ---: |")
    print(f"| `vaekit train --preset mnist-mlp`, {args.epochs} epochs, static | {cell('vaekit_full', 'cold')} | "
          f"{cell('vaekit_full', 'warm')} |")
    if results["pythae_full"]:
        py = statistics.median(results["pythae_full"])
        print(f"| Pythae script, {args.epochs} epochs | {py:.1f} (median, all rounds) | |")
        warm = statistics.median(results["vaekit_full"][1:]) if len(results["vaekit_full"]) > 1 else float("nan")
        print(f"\nPythae / vaekit: {py / results['vaekit_full'][0]:.2f}x cold, {py / warm:.2f}x warm")
    print(f"| `vaekit train --set train.epochs=1 --set data.limit=1000` | {cell('vaekit_short', 'cold')} | "
          f"{cell('vaekit_short', 'warm')} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "cpu": info, "epochs": args.epochs,
                                               "seconds": results}, indent=2))


if __name__ == "__main__":
    main()
