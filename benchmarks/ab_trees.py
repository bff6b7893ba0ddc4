"""One vaekit command from two source trees, in alternating processes: the before/after of a change.

    .venv/bin/python benchmarks/ab_trees.py --a OLD_CHECKOUT --b NEW_CHECKOUT [--rounds 4] [--json out.json] \
        -- train --preset mnist-mlp --set train.epochs=10 --set data.binarize=static

Each round runs the command once with `PYTHONPATH=A/src`, once with `PYTHONPATH=B/src` (in turn
first), as `python -m vaekit.cli ... --runs-dir <tmp> --no-progress`, and times it from start to
exit. Both share one JAX compilation cache, filled by an untimed first round, so the times are
warm ones (a user's second run). Prints each tree's median and the ratio B/A.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_once(tree: Path, command: list[str], cache: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(tree / "src"), XDG_CACHE_HOME=str(cache))
    with tempfile.TemporaryDirectory() as runs:
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "vaekit.cli", *command, "--runs-dir", runs, "--no-progress"],
                             capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{tree}: exit {out.returncode}: {out.stderr[-2000:]}")
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--a", type=Path, required=True, help="checkout of the 'before' tree")
    p.add_argument("--b", type=Path, required=True, help="checkout of the 'after' tree")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--json", type=Path, help="write the times here")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the vaekit command, after --")
    args = p.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    times: dict[str, list[float]] = {"a": [], "b": []}
    with tempfile.TemporaryDirectory() as cache:
        for tree in (args.a, args.b):  # fills the shared compilation cache
            run_once(tree, command, Path(cache))
        for r in range(args.rounds):
            order = ("a", "b") if r % 2 == 0 else ("b", "a")
            for which in order:
                times[which].append(run_once(getattr(args, which), command, Path(cache)))
            print(f"round {r + 1}: a {times['a'][-1]:.2f} s, b {times['b'][-1]:.2f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"median: a {med['a']:.2f} s, b {med['b']:.2f} s, b/a {med['b'] / med['a']:.3f}")
    if args.json:
        args.json.write_text(json.dumps({"command": command, "a": str(args.a), "b": str(args.b), "times": times,
                                         "median": med, "date": time.strftime("%Y-%m-%d")}, indent=2) + "\n")


if __name__ == "__main__":
    main()
