"""`shapes-beta` conv training step on CPU: vaekit's conv forms side by side with a plain PyTorch loop.

    .venv/bin/python benchmarks/conv_throughput.py [--rounds 3] [--steps 10] [--skip-peer] [--skip-layers]
        [--variants current,s2d+d2s+rows] [--json out.json]

The model is `shapes-beta` (64x64x1, 4x4 stride-2 convs 32-32-64-64 with BatchNorm, dense 256,
10 latents, the mirrored transposed-conv decoder, Bernoulli, beta 4, Adam 1e-4, batch 64),
built with vaekit's public API (`vaekit.resolve` + `vaekit.Trainer`, `train.loop=steps`, the
CPU default for conv nets). Two measurements:

1. **Layer by layer** (forward + backward, jitted, batch 64): each encoder convolution in every
   form of `conv_forms.CONV_FORMS` (benchmarks/conv_forms.py), each decoder transposed convolution
   in every form of `CONV_TRANSPOSE_FORMS`, each BatchNorm as `nnx.BatchNorm` and as
   `cpu_conv.batch_norm`; the first encoder layer without an input gradient, as in the model.
   Median of `--layer-repeats` interleaved calls.
2. **The whole trainer step** (data rendering, forward, backward, Adam, metrics) for each variant:
   a variant routes `nnx.Conv`, `nnx.ConvTranspose` and `nnx.BatchNorm` calls through the named
   forms while the trainer compiles (`current` is the code as wired in
   `vaekit.nets.conv`, unpatched). Each round times one chunk of `--steps` steps of every variant
   and then one run of the plain PyTorch loop (`benchmarks/peers/torch_plain.py --model conv`,
   in `.venv-bench`), so every ratio comes from the same minutes; medians over `--rounds`.

Variant names: `CONV+TCONV[+rows]` with CONV in {nnx, s2d, s2d_matmul, patches}, TCONV in {nnx,
subpixel, d2s, d2s_matmul}: every layer runs whole (bias included) through `nnx.BatchNorm`, or with
`+rows` through `cpu_conv.batch_norm` (named for its first form, reductions in the row view; since
2026-11-27 (fourth session) its channel sums are matrix-vector products). `current` is the nets as
wired: those forms plus the conv bias left out in front of a training-mode BatchNorm.
Every result records the CPU model and flags (from /proc/cpuinfo) and how busy the CPU was.
"""

from __future__ import annotations

import argparse
import os
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# vaekit sets glibc malloc up on import (vaekit.runtime.configure_malloc); --no-malloc measures without
if "--no-malloc" in sys.argv:
    os.environ["VAEKIT_MALLOC"] = "0"
from vaekit import runtime as _xla  # noqa: E402  (no JAX at import)

MALLOC_CONFIGURED = os.environ.get("VAEKIT_MALLOC", "1") != "0" and _xla.configure_malloc()

import vaekit  # noqa: E402,F401  (first: its XLA CPU settings must be in place before JAX starts)

from common import TORCH_PEER, cpu_busy, cpu_flags_summary, cpu_info, run_peer, trainer_step_timer  # noqa: E402
from conv_forms import CONV_FORMS, CONV_TRANSPOSE_FORMS  # noqa: E402

DEFAULT_VARIANTS = "current,s2d+subpixel,nnx+d2s,s2d+d2s,s2d+d2s+rows,s2d_matmul+d2s_matmul+rows"
BATCH = 64
ENCODER = [(64, 1, 32), (32, 32, 32), (16, 32, 64), (8, 64, 64)]  # (side, in, out) of each conv
DECODER = [(4, 64, 64), (8, 64, 32), (16, 32, 32), (32, 32, 1)]  # of each transposed conv
NORMS = [(32, 32), (16, 32), (8, 64), (4, 64), (8, 64), (16, 32), (32, 32)]  # (side, channels) of each BatchNorm


def parse_variant(name: str) -> tuple[str | None, str | None, bool]:
    """"s2d+d2s+rows" -> ("s2d", "d2s", True); "current" -> (None, None, False)."""
    if name == "current":
        return None, None, False
    parts = name.split("+")
    rows = parts[-1] == "rows"
    if rows:
        parts = parts[:-1]
    if len(parts) != 2:
        raise SystemExit(f"variant {name!r}: expected CONV+TCONV[+rows] or 'current'")
    return parts[0], parts[1], rows


@contextlib.contextmanager
def forms(conv_form: str | None, tconv_form: str | None, rows_bn: bool):
    """Route nnx.Conv / nnx.ConvTranspose / nnx.BatchNorm calls through the named forms (conv_forms).

    None leaves that layer type alone. "nnx" means the layer's own call (lax.conv_general_dilated /
    lax.conv_transpose). vaekit.nets.conv's own CPU form of the transposed conv (and of the conv,
    once wired) is bypassed so that every call reaches the layer's __call__; cpu_conv's default
    forms are set too, for code that calls cpu_conv.conv / conv_transpose directly.
    """
    from flax import nnx

    from vaekit.nets import conv as netconv
    from vaekit.nets import cpu_conv as cc

    saved_calls = {cls: cls.__call__ for cls in (nnx.Conv, nnx.ConvTranspose, nnx.BatchNorm)}
    saved_mod = {name: getattr(netconv, name) for name in
                 ("conv", "conv_transpose", "batch_norm", "fast_form_applies")
                 if hasattr(netconv, name)}
    saved_forms = (cc.CONV_FORM, cc.CONV_TRANSPOSE_FORM)
    orig_conv, orig_tconv, orig_bn = saved_calls[nnx.Conv], saved_calls[nnx.ConvTranspose], saved_calls[nnx.BatchNorm]
    # "nnx": the layer's own computation, the "native" form
    conv_fn = None if conv_form is None else CONV_FORMS["native" if conv_form == "nnx" else conv_form]
    tconv_fn = None if tconv_form is None else CONV_TRANSPOSE_FORMS["native" if tconv_form == "nnx" else tconv_form]

    def conv_call(self, x, *a, **k):
        if not a and not k and cc.conv_applies(self):
            return cc.conv(self, x, form=conv_fn)
        return orig_conv(self, x, *a, **k)

    def tconv_call(self, x, *a, **k):
        if not a and not k and cc.conv_transpose_applies(self):
            return cc.conv_transpose(self, x, form=tconv_fn)
        return orig_tconv(self, x, *a, **k)

    def bn_call(self, x, use_running_average=None, **k):
        ura = self.use_running_average if use_running_average is None else use_running_average
        if not k and ura is not None and cc.batch_norm_applies(self, x):
            return cc.batch_norm(self, x, ura)
        return orig_bn(self, x, use_running_average, **k)

    try:
        if conv_form is not None:
            nnx.Conv.__call__ = conv_call
            cc.CONV_FORM = conv_fn
            if "conv" in saved_mod:
                netconv.conv = lambda layer, x, **kw: layer(x)
                netconv.fast_form_applies = lambda layer: False  # the layer whole, bias included
        if tconv_form is not None:
            nnx.ConvTranspose.__call__ = tconv_call
            cc.CONV_TRANSPOSE_FORM = tconv_fn
            if "conv_transpose" in saved_mod:
                netconv.conv_transpose = lambda layer, x, **kw: layer(x)
                netconv.fast_form_applies = lambda layer: False
        if conv_form is not None or tconv_form is not None:
            netconv.batch_norm = lambda layer, x: layer(x)  # nnx.BatchNorm's call, patched by +rows
        if rows_bn:
            nnx.BatchNorm.__call__ = bn_call
        yield
    finally:
        for cls, call in saved_calls.items():
            cls.__call__ = call
        for name, fn in saved_mod.items():
            setattr(netconv, name, fn)
        cc.CONV_FORM, cc.CONV_TRANSPOSE_FORM = saved_forms


# --------------------------------------------------------------------------- layer by layer


def _timed(fn, *args):
    import jax

    jax.block_until_ready(fn(*args))
    jax.block_until_ready(fn(*args))

    def run():
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        return time.perf_counter() - t0

    return run


def layer_cases():
    """[(layer label, form, timer)] for every layer of shapes-beta and every form."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from vaekit.nets import cpu_conv as cc

    cases = []
    key = jax.random.key(0)

    def grad_case(fn, x, kernel, bias, x_grad):
        y = fn(x, kernel, bias)
        g = jax.random.normal(jax.random.fold_in(key, 1), y.shape)
        argnums = (0, 1, 2) if x_grad else (1, 2)
        f = jax.jit(jax.grad(lambda x, k, b: jnp.vdot(fn(x, k, b), g), argnums=argnums))
        return _timed(f, x, kernel, bias)

    for i, (side, cin, cout) in enumerate(ENCODER):
        x = jax.random.normal(key, (BATCH, side, side, cin))
        k = 0.1 * jax.random.normal(jax.random.fold_in(key, 2), (4, 4, cin, cout))
        b = jnp.zeros((cout,))
        for name, fn in CONV_FORMS.items():
            cases.append((f"enc conv{i} {side}x{side}x{cin}->{cout}", name, grad_case(fn, x, k, b, i > 0)))
    for i, (side, cin, cout) in enumerate(DECODER):
        x = jax.random.normal(key, (BATCH, side, side, cin))
        k = 0.1 * jax.random.normal(jax.random.fold_in(key, 2), (4, 4, cin, cout))
        b = jnp.zeros((cout,))
        for name, fn in CONV_TRANSPOSE_FORMS.items():
            cases.append((f"dec tconv{i} {side}x{side}x{cin}->{cout}", name, grad_case(fn, x, k, b, True)))
    for i, (side, ch) in enumerate(NORMS):
        x = 1.0 + 2.0 * jax.random.normal(key, (BATCH, side, side, ch))
        g = jax.random.normal(jax.random.fold_in(key, 3), x.shape)
        bn = nnx.BatchNorm(ch, momentum=0.9, rngs=nnx.Rngs(0))
        bn.train()
        graphdef, state = nnx.split(bn)
        for name, call in (("nnx", lambda m, x: m(x)), ("rows", cc.batch_norm)):
            def loss(x, state, call=call):
                m = nnx.merge(graphdef, state, copy=True)
                return jnp.vdot(call(m, x), g), nnx.state(m)

            f = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))
            cases.append((f"batchnorm{i} {side}x{side}x{ch}", name, _timed(f, x, state)))
    return cases


def layer_table(repeats: int) -> list[dict]:
    cases = layer_cases()
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(repeats):
        for label, form, run in cases:
            times.setdefault((label, form), []).append(run())
    return [{"layer": label, "form": form, "ms": 1e3 * statistics.median(v)} for (label, form), v in times.items()]


def print_layers(rows: list[dict]) -> None:
    by_layer: dict[str, dict[str, float]] = {}
    for r in rows:
        by_layer.setdefault(r["layer"], {})[r["form"]] = r["ms"]
    print("\nlayer by layer, forward + backward, batch 64 (ms, median)")
    for layer, forms_ in by_layer.items():
        base = forms_.get("native", forms_.get("nnx"))
        cells = "  ".join(f"{f} {ms:7.2f}" + (f" ({base / ms:4.1f}x)" if base and f not in ("native", "nnx") else "")
                          for f, ms in forms_.items())
        print(f"  {layer:<28} {cells}")
    totals: dict[str, float] = {}
    for r in rows:
        kind = r["layer"].split()[0] + " " + r["layer"].split()[1].rstrip("0123456789")
        totals[f"{kind}: {r['form']}"] = totals.get(f"{kind}: {r['form']}", 0.0) + r["ms"]
    print("  sums: " + ", ".join(f"{k} {v:.1f}" for k, v in totals.items()))


# --------------------------------------------------------------------------- whole step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma-separated (default {DEFAULT_VARIANTS})")
    p.add_argument("--rounds", type=int, default=3, help="rounds of (every variant, then the peer); medians")
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant per round (default 10)")
    p.add_argument("--peer-steps", type=int, default=10, help="torch: steps per timed block (default 10)")
    p.add_argument("--peer-repeats", type=int, default=3, help="torch: timed blocks per round (default 3)")
    p.add_argument("--layer-repeats", type=int, default=7, help="calls per layer and form (default 7)")
    p.add_argument("--skip-peer", action="store_true", help="vaekit only")
    p.add_argument("--skip-layers", action="store_true", help="no layer-by-layer table")
    p.add_argument("--skip-step", action="store_true", help="no whole-step table")
    p.add_argument("--no-malloc", action="store_true",
                   help="leave glibc malloc as it is (vaekit otherwise sets it up on import: no per-step page faults)")
    p.add_argument("--json", help="write all numbers here")
    args = p.parse_args()
    import jax

    info = cpu_info()
    print(f"shapes-beta conv step, batch {BATCH}, backend {jax.default_backend()}, {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"CPU: {info['model']}, {info['cores']} cores, {cpu_flags_summary(info['flags'])}")
    print(f"glibc malloc configured by vaekit: {MALLOC_CONFIGURED}")
    out: dict = {"date": time.strftime("%Y-%m-%d"), "cpu": info, "jax": jax.__version__, "malloc": MALLOC_CONFIGURED}

    if not args.skip_layers:
        busy = cpu_busy()
        rows = layer_table(args.layer_repeats)
        out["layers"] = {"rows": rows, "busy_before": busy}
        print_layers(rows)

    if not args.skip_step:
        cfg = vaekit.resolve("shapes-beta", None, ["data.val_size=100", "train.loop=steps",
                                                   f"train.chunk_steps={args.steps}"])
        names = [v.strip() for v in args.variants.split(",") if v.strip()]
        timers = {}
        for name in names:
            with forms(*parse_variant(name)):
                t0 = time.perf_counter()
                timers[name] = trainer_step_timer(cfg, args.steps)  # compiles under the patch
            print(f"  built and compiled {name} in {time.perf_counter() - t0:.1f} s", flush=True)
        results: dict[str, list[float]] = {n: [] for n in names}
        peer_runs: list[dict] = []
        busy: list[float] = []
        for r in range(args.rounds):
            busy.append(cpu_busy(0.5))
            for name in names:
                results[name].append(timers[name]())
            if not args.skip_peer:
                peer_runs.append(run_peer({"model": "conv", "steps": args.peer_steps, "repeats": args.peer_repeats,
                                           "warmup": 3, "quiet": True}, script=TORCH_PEER))
            line = ", ".join(f"{n} {1e3 * results[n][-1]:.1f}" for n in names)
            peer_s = f", torch {1e3 * peer_runs[-1]['seconds_per_step']:.1f}" if peer_runs else ""
            print(f"  round {r + 1}: {line}{peer_s} ms/step (others busy {100 * busy[-1]:.0f}%)", flush=True)
        peer_med = statistics.median(pr["seconds_per_step"] for pr in peer_runs) if peer_runs else None
        base = statistics.median(results[names[0]])
        print(f"\nwhole trainer step, median of {args.rounds} rounds of {args.steps} steps (ms/step)")
        print(f"  {'variant':<30}{'ms/step':>9}{'x ' + names[0]:>18}{'torch / vaekit':>16}")
        table = []
        for name in names:
            med = statistics.median(results[name])
            # per-round ratio to the peer (same minutes), then the median of those
            ratios = [pr["seconds_per_step"] / v for pr, v in zip(peer_runs, results[name])]
            ratio = statistics.median(ratios) if ratios else float("nan")
            table.append({"variant": name, "seconds_per_step": med, "rounds": results[name],
                          "speedup_vs_first": base / med, "torch_over_vaekit": ratio})
            print(f"  {name:<30}{1e3 * med:>9.1f}{base / med:>17.2f}x{ratio:>15.2f}x")
        if peer_med is not None:
            print(f"  {'plain PyTorch ' + peer_runs[0]['torch']:<30}{1e3 * peer_med:>9.1f}  "
                  f"({peer_runs[0]['threads']} threads)")
        out["step"] = {"variants": table, "peer": peer_runs, "peer_seconds_per_step": peer_med, "busy": busy,
                       "steps": args.steps, "rounds": args.rounds}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
