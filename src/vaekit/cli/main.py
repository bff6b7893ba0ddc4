"""The `vaekit` command line: thin wrappers that parse arguments and call library functions.

Every user-facing problem is a `VaekitError`, printed as one line on stderr with a non-zero exit
status; a traceback is shown only with `--debug`.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import sys
import threading
from pathlib import Path

import vaekit.cli.text as text_cli
from vaekit.errors import VaekitError
from vaekit.runs.layout import check_out

EXIT_ERROR, EXIT_INTERNAL, EXIT_INTERRUPTED = 2, 1, 130


def _console(stderr: bool = True):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


# --------------------------------------------------------------------------- commands


def cmd_train(args) -> None:
    from vaekit import config as config_lib
    from vaekit.data import JAX_FREE_SOURCES, drop_prefetched, prefetch

    if not args.resume:
        # The data starts loading in a background thread now, before JAX and the models import,
        # when its source needs no JAX (which must wait for jax.distributed below).
        data_cfg = config_lib.resolve_data(args.preset, args.config, args.set)
        if data_cfg is not None and data_cfg.source in JAX_FREE_SOURCES:
            prefetch(data_cfg)
    try:
        _train_command(args)
    finally:
        drop_prefetched()  # data nobody took (the command failed first) is not kept in the process


def _train_command(args) -> None:
    from vaekit import config as config_lib
    from vaekit import distributed
    from vaekit.data import prefetch

    distributed.initialize()  # joins a multi-process run when VAEKIT_COORDINATOR etc. (or a cluster) say so

    if args.resume:
        from vaekit.runs import layout as ck

        run_dir = ck.check_run_dir(args.resume)
        if args.preset or args.config:
            raise VaekitError("--resume continues a run with its own config; drop --preset/--config")
        if args.name or args.overwrite:
            raise VaekitError("--resume continues the run in its own directory; drop --name/--overwrite")
        cfg = ck.read_config(run_dir)
        length = "train.steps" if cfg.train.steps is not None else "train.epochs"  # how this run counts
        for text in args.set:
            update = config_lib.parse_override(text)
            if list(update) != ["train"] or [f"train.{k}" for k in update["train"]] != [length]:
                raise VaekitError(f"with --resume only {length} may change (this run is counted in "
                                  f"{length.split('.')[1]}); got '{text}'")
            cfg = config_lib.merge(cfg, update)
        config_lib.validate(cfg)
        layers = {"overrides": list(args.set)}
    else:
        cfg, layers = config_lib.resolve_layers(args.preset, args.config, args.set)
    # The data loads in a background thread (unless it already does, see above) while the trainer,
    # Orbax, TensorBoard's writer and matplotlib (the run's pictures) import here; `train` then
    # takes the loaded splits.
    prefetch(cfg.data)
    import orbax.checkpoint  # noqa: F401
    import tensorboardX  # noqa: F401

    from vaekit import plots  # noqa: F401

    from vaekit.runs import checkpoint
    from vaekit.training.trainer import train

    path = train(
        cfg,
        runs_dir=args.runs_dir,
        name=args.name,
        overwrite=args.overwrite,
        resume=args.resume,
        progress=not args.no_progress,
        layers=layers,
    )
    print(path)


def _load(args):
    from vaekit.runs.run import load_run

    return load_run(args.run, checkpoint=args.checkpoint)


def _save_array_or_grid(path: Path, images, ncols: int, title: str, row_labels=None) -> None:
    import numpy as np

    from vaekit import plots

    if path.suffix.lower() == ".npy":
        from vaekit.runs.layout import atomic_write

        def save(tmp):
            with open(tmp, "wb") as f:  # a file object: np.save would append .npy to the name
                np.save(f, np.asarray(images))

        atomic_write(path, save)
    else:
        plots.save_images(path, np.asarray(images), ncols=ncols, title=title, row_labels=row_labels)


def _check_label(run, label: int | None) -> None:
    """--label needs a conditional model and a class it knows; one line otherwise."""
    if label is None:
        return
    if not run.model.capabilities.conditional:
        raise VaekitError(f"--label needs a conditional model (e.g. model.kind=cvae); run '{run.path}' is "
                          f"model.kind '{run.config.model.kind}'")
    k = run.spec.num_classes
    if not 0 <= label < k:
        raise VaekitError(f"--label {label} is outside the run's classes [0, {k})")


def _of_class(x, y, label: int, n: int):
    """The first n examples of class `label` (x, y); one line when there are none."""
    import numpy as np

    idx = np.flatnonzero(np.asarray(y) == label)[:n]
    if idx.size == 0:
        raise VaekitError(f"the split has no examples of class {label}")
    return x[idx], np.asarray(y)[idx]


def cmd_sample(args) -> None:
    import jax.numpy as jnp
    from flax import nnx

    from vaekit.training.trainer import sample_grid

    if args.n <= 0:
        raise VaekitError(f"-n must be positive, got {args.n}")
    if args.temperature <= 0:
        raise VaekitError(f"--temperature must be positive, got {args.temperature}")
    if text_cli.is_text_run(args.run):  # token data: sentences (by the data kind, never the model name)
        return text_cli.cmd_sample(args, _load)
    text_cli.reject_text_flags(args, "sample")
    out = check_out(args.out or "samples.png", (".png", ".npy"))
    run = _load(args)
    _check_label(run, args.label)
    rngs = nnx.Rngs(sample=args.seed)
    rows, cols = None, args.cols
    if args.label is not None:
        images = run.model.sample(args.n, rngs=rngs, y=jnp.full((args.n,), args.label), temperature=args.temperature)
        title = f"{args.n} samples of class {args.label}, temperature {args.temperature}"
        from vaekit.evaluate.quality import samples_label_accuracy

        judged = samples_label_accuracy(run, images, args.label)
        if judged is not None:
            print(f"label accuracy {judged[0]:.3f}: the fraction of these samples the feature net {judged[1]} "
                  f"classifies as {args.label}", file=sys.stderr)
    elif run.model.capabilities.conditional:  # one row per class
        images, cols, rows = sample_grid(run.model, args.n, rngs.sample(), run.spec.num_classes, per_class=args.cols)
        title = f"{cols} samples per class, temperature 1"
    else:
        images = run.model.sample(args.n, rngs=rngs, temperature=args.temperature)
        title = f"{args.n} prior samples, temperature {args.temperature}"
    _save_array_or_grid(out, images, cols, title, rows)
    print(out)


def _split_arrays(run, split: str, n: int | None, label: int | None = None):
    """(x, y) of the first n examples of a split, or of its examples of class `label`."""
    splits = run.data()
    if split not in ("train", "val", "test"):
        raise VaekitError(f"--split must be train, val or test, got '{split}'")
    data = splits.examples(split, None if label is not None and split != "train" else n)
    x, y = data["x"], data.get("y")
    if label is not None:
        x, y = _of_class(x, y, label, n)
    return x, y


def _labels(run, y):
    """Labels to pass the model: the data's for a conditional model, none for any other."""
    import jax.numpy as jnp

    return jnp.asarray(y) if run.model.capabilities.conditional and y is not None else None


def cmd_reconstruct(args) -> None:
    import jax.numpy as jnp
    import numpy as np

    from vaekit import plots

    if args.n <= 0:
        raise VaekitError(f"-n must be positive, got {args.n}")
    if text_cli.is_text_run(args.run):
        return text_cli.cmd_reconstruct(args, _load)
    text_cli.reject_text_flags(args, "reconstruct")
    out = check_out(args.out or "reconstructions.png", (".png",))
    run = _load(args)
    _check_label(run, args.label)
    x, y = _split_arrays(run, args.split, args.n)
    y = _labels(run, y)
    if args.label is None:
        x_hat = run.model.reconstruct(jnp.asarray(x), y)
    else:  # each input's code decoded under another class: the CVAE's style transfer
        z = run.model.encode(jnp.asarray(x), y).mean
        x_hat = run.model.decode(z, jnp.full((len(x),), args.label)).mean()
    plots.save_reconstructions(out, x, np.asarray(x_hat), ncols=args.cols)
    print(out)


def cmd_interpolate(args) -> None:
    import jax.numpy as jnp
    import numpy as np

    from vaekit import plots
    from vaekit.models import require

    if text_cli.is_text_run(args.run):
        return text_cli.cmd_interpolate(args, _load)
    text_cli.reject_text_flags(args, "interpolate")
    out = check_out(args.out or "interpolations.png", (".png",))
    if args.steps < 2 or args.pairs < 1:
        raise VaekitError("--steps must be >= 2 and --pairs >= 1")
    run = _load(args)
    require(run.model, "latent_vector", "vaekit interpolate")
    _check_label(run, args.label)
    conditional = run.model.capabilities.conditional
    if conditional and args.label is None:  # both ends of a pair must share the class it is decoded under
        x, y = _split_arrays(run, args.split, None)
        parts = [_of_class(x, y, int(c), 2) for c in np.unique(y)[: args.pairs]]
        x, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    else:
        x, y = _split_arrays(run, args.split, 2 * args.pairs, args.label)
    if len(x) % 2:
        x, y = x[:-1], None if y is None else y[:-1]
    y = _labels(run, y)
    mu = np.asarray(run.model.encode(jnp.asarray(x), y).mean)  # (2P, D)
    from vaekit.evaluate.latent import interpolate

    z = interpolate(mu[0::2], mu[1::2], args.steps, args.method).astype(np.float32)  # (P, steps, D)
    yz = None if y is None else jnp.repeat(y[0::2], args.steps)
    images = np.asarray(run.model.decode(jnp.asarray(z.reshape(-1, z.shape[-1])), yz).mean())
    plots.save_images(out, images, ncols=args.steps, title=f"latent interpolations ({args.method}) between posterior means")
    print(out)


def cmd_evaluate(args) -> None:
    from rich.table import Table

    from vaekit.evaluate import evaluate

    run = _load(args)
    s = evaluate(run, split=args.split, samples=args.samples, limit=args.limit, batch_size=args.batch_size,
                 chunk=args.chunk, progress=not args.no_progress)
    table = Table(title=f"{run.path} ({s['split']} split, {s['examples']} examples, k = {s['samples']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    nll = "conditional NLL -log p(x|y) (nats)" if s["conditional"] else "NLL (nats)"
    if s.get("nll_is_bound"):  # an exact bound, no importance sampling
        nll = "NLL upper bound -log p(x|z_q) - log p(z_q) (nats)"
    table.add_row(nll, f"{s['nll']:.2f} ± {s['nll_stderr']:.2f}")
    table.add_row("ELBO (k = 1)", f"{s['elbo']:.2f}")
    for key in ("iwae_k1", "iwae_k5", "iwae_k50"):
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
    _console(stderr=False).print(table)
    print(Path(run.path) / "evaluation.json")


def cmd_disentanglement(args) -> None:
    from rich.table import Table

    from vaekit.evaluate.disentanglement import evaluate_run

    run = _load(args)
    err = _console()
    result = evaluate_run(run, num_train=args.num_train, num_test=args.num_test, seed=args.seed, n_jobs=args.n_jobs,
                          on_phase=lambda text: err.print(f"disentanglement: {text}", soft_wrap=True))
    table = Table(title=f"disentanglement of {run.path} ({args.num_train} train / {args.num_test} test codes)")
    table.add_column("metric")
    table.add_column("score", justify="right")
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
    _console(stderr=False).print(table)
    print(Path(run.path) / "disentanglement.json")


def cmd_traverse(args) -> None:
    from vaekit import plots
    from vaekit.evaluate.disentanglement import latent_traversal

    if text_cli.is_text_run(args.run):
        raise VaekitError(f"vaekit traverse draws images; run '{args.run}' is a text run (use vaekit interpolate "
                          f"--between \"a\" \"b\")")
    out = check_out(args.out, (".png",))
    run = _load(args)
    _check_label(run, args.label)
    x, y = _split_arrays(run, args.split, 1000, args.label)
    images, labels, values = latent_traversal(run.model, x, None if y is None else _labels(run, y), index=args.index,
                                              steps=args.steps, span=args.range, dims=args.dims)
    plots.save_traversal(out, images, labels, values)
    print(out)


def _fmt(v) -> str:
    """A value for a table: integers as they are, floats to four significant digits (one decimal
    from 100 up, exponent notation outside [1e-3, 1e6))."""
    import math

    if isinstance(v, bool) or not isinstance(v, float):
        return str(v)
    a = abs(v)
    if not math.isfinite(v) or a == 0:
        return str(v)
    if a >= 1e6 or a < 1e-3:
        return f"{v:.3e}"
    if a >= 100:
        return f"{v:,.1f}"
    return f"{v:.{3 - math.floor(math.log10(a))}f}"


def _table(title: str, header=("field", "value")):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column(header[0])
    table.add_column(header[1], justify="right" if header[1] != "value" else "left")
    return table


def cmd_info(args) -> None:
    from vaekit.runs import layout as ck
    from vaekit.training.trainer import collapse_warning

    run_dir = ck.check_run_dir(args.run)
    info = ck.read_json(run_dir / ck.RUN_FILE)
    cfg = ck.read_config(run_dir)
    history = ck.read_metrics(run_dir)
    console = _console(stderr=False)

    # 1. status and progress
    status, detail = ck.run_status(run_dir, info)
    run = _table(f"run {run_dir}")
    run.add_row("status", status + (f" ({detail})" if detail else ""))
    if status == "interrupted":
        run.add_row("continue with", f"vaekit train --resume {run_dir}")
    if info.get("error"):
        run.add_row("error", str(info["error"]))
    total = info.get("total_steps")
    if cfg.train.steps is not None:
        run.add_row("steps", f"{info.get('step', 0):,} of {cfg.train.steps:,} (validation every {cfg.train.eval_every:,})")
    else:
        run.add_row("epochs", f"{info.get('epoch', 0)} of {cfg.train.epochs}")
        if "step" in info:
            run.add_row("steps", f"{info['step']:,}" + (f" of {total:,}" if total else ""))
    if "parameters" in info:  # what the trainer counted on the built model: right for every kind
        width = f", code width {info['code_width']}" if info.get("code_width") else ""
        run.add_row("model", f"{info['model_kind']} ({info['parameters']:,} trainable parameters{width})")
    else:  # a run from before vaekit recorded them
        run.add_row("model", f"{info.get('model_kind', cfg.model.kind)} ({cfg.model.net}, {cfg.model.latent_dim} latents, "
                             f"{cfg.model.likelihood} likelihood)")
    spec = info.get("data_spec") or {}
    data = cfg.data.path or cfg.data.source
    run.add_row("data", f"{data}: {info.get('num_train', '?'):,} training examples" if isinstance(info.get("num_train"), int)
                else str(data))
    if spec:
        run.add_row("example", f"{spec.get('kind')} {tuple(spec.get('shape', ()))}")
    if "best" in info:
        run.add_row(f"best {info.get('best_metric', 'val')}", _fmt(info["best"]))
    layers = info.get("config_layers")
    if layers:
        parts = [f"preset {layers.get('preset')} ({layers.get('preset_from')})"]
        if layers.get("file"):
            parts.append(f"file {layers['file']}")
        if layers.get("overrides"):
            parts.append("--set " + " ".join(layers["overrides"]))
        if layers.get("resume_overrides"):
            parts.append("on resume: --set " + " ".join(layers["resume_overrides"]))
        run.add_row("config from", "; ".join(parts))
    console.print(run)

    # 2. final (or latest) metrics
    if history:
        last = history[-1]
        where = f"step {last['step']:,}" if cfg.train.steps is not None and "step" in last else f"epoch {last['epoch']}"
        metrics = _table(f"metrics at {where}", ("metric", "value"))
        for k, v in last.items():
            if not isinstance(v, list) and k not in ("epoch", "step"):
                metrics.add_row(k, _fmt(v))
        console.print(metrics)
        warning = "val/kl_per_dim" in last and collapse_warning(last["val/kl_per_dim"], last.get("val/active_units"),
                                                                cfg.model.latent_dim)
        if warning:
            console.print(f"[bold yellow]warning:[/] {warning}", soft_wrap=True)

    # 3. evaluation results
    _show_results(console, run_dir)

    # 4. the resolved config, last
    table = _table("config (config.yaml)", ("key", "value"))
    for section, values in cfg.to_dict().items():
        if isinstance(values, dict):
            for k, v in values.items():
                table.add_row(f"{section}.{k}", str(v))
        else:
            table.add_row(section, str(values))
    console.print(table)


def _show_results(console, run_dir: Path) -> None:
    """evaluation.json, disentanglement.json and quality.json of a run, where present."""
    from vaekit.runs import layout as ck

    path = run_dir / "evaluation.json"
    if path.exists():
        results = ck.read_json(path)
        table = _table(f"evaluation ({path.name})", ("metric", "value"))
        for key, s in results.items():
            if not isinstance(s, dict):
                continue
            label = f"{s.get('split', '?')}, {s.get('examples', '?')} examples, k = {s.get('samples', '?')}"
            nll = "NLL -log p(x|y)" if s.get("conditional") else "NLL"
            if "nll" in s:
                table.add_row(f"{nll} ({label})", f"{_fmt(s['nll'])} ± {_fmt(s.get('nll_stderr', float('nan')))}")
            for k in ("elbo", "iwae_k5", "iwae_k50", "bits_per_dim", "perplexity", "kl", "active_units",
                      "reconstruction_mse"):
                if k in s:
                    table.add_row(f"  {k}", _fmt(s[k]))
        console.print(table)
    path = run_dir / "disentanglement.json"
    if path.exists():
        r = ck.read_json(path)
        table = _table(f"disentanglement ({path.name})", ("metric", "score"))
        rows = [("MIG", ("mig", "mig")), ("SAP", ("sap", "sap")), ("DCI disentanglement", ("dci", "disentanglement")),
                ("DCI completeness", ("dci", "completeness")), ("DCI informativeness", ("dci", "informativeness_test")),
                ("FactorVAE score", ("factorvae", "eval_accuracy")), ("beta-VAE score", ("betavae", "eval_accuracy"))]
        for label, (a, b) in rows:
            v = (r.get(a) or {}).get(b) if isinstance(r.get(a), dict) else None
            if v is not None:
                table.add_row(label, _fmt(v))
        console.print(table)
    path = run_dir / "quality.json"
    if path.exists():
        table = _table(f"sample quality ({path.name})", ("metric", "value"))

        def rows(prefix, obj):
            for k, v in obj.items():
                if isinstance(v, dict):
                    rows(f"{prefix}{k}.", v)
                elif isinstance(v, (int, float, str)) and not isinstance(v, bool):
                    table.add_row(f"{prefix}{k}", _fmt(v))

        rows("", ck.read_json(path))
        console.print(table)


def cmd_presets(args) -> None:
    from rich.table import Table

    from vaekit.config import DEFAULT_PRESET, list_presets

    table = Table(title="vaekit presets (vaekit train --preset NAME)")
    table.add_column("name")
    table.add_column("description")
    for name, desc in list_presets().items():
        table.add_row(name + (" (default)" if name == DEFAULT_PRESET else ""), desc)
    _console(stderr=False).print(table)


# --------------------------------------------------------------------------- parser


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default; options without one (None, False) say nothing."""

    def _get_help_string(self, action):
        if action.default in (None, False) or action.default == [] or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vaekit")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vaekit",
        description="Train, evaluate and inspect variational autoencoders (JAX, Flax NNX, Optax).",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"vaekit {_version()}", help="print the version and exit")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, help):
        return sub.add_parser(name, help=help, description=help, formatter_class=_HelpFormatter)

    t = command("train", "train a model; prints the run directory last")
    t.add_argument("--preset", help="named recipe (see `vaekit presets`); else the config file's `preset:` key, "
                                    "else mnist-mlp. Applied first, then --config, then --set")
    t.add_argument("--config", help="YAML file with data/model/objective/train sections (and optionally `preset:`)")
    t.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (repeatable, applied last, in order), e.g. --set train.epochs=5")
    t.add_argument("--name", help="run directory name (default: the preset's name, or <data>-<net> when the data "
                                  "or net differ from the preset's, then -<date>-<time>)")
    t.add_argument("--runs-dir", default="runs", help="parent directory of run directories")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run directory of that name")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its newest intact checkpoint "
                                                       "(from the start if it has none)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar (epoch lines only); without a "
                                                                   "terminal there is none anyway")
    t.set_defaults(func=cmd_train)

    def run_arg(sp):
        sp.add_argument("run", help="run directory")
        sp.add_argument("--checkpoint", default="best", choices=("best", "latest"),
                        help="which checkpoint to load: best validation value, or the last saved")

    s = command("sample", "draw samples from the prior and save a grid (.png) or array (.npy)")
    run_arg(s)
    s.add_argument("-n", type=int, default=64, help="number of samples")
    s.add_argument("--out", help="output .png grid or .npy array (default samples.png); a text run: .txt "
                                 "(default samples.txt)")
    s.add_argument("--temperature", type=float, default=1.0,
                   help="prior standard deviation multiplier (text runs: the softmax temperature of sampled words)")
    s.add_argument("--seed", type=int, default=0, help="seed of the prior draws")
    s.add_argument("--cols", type=int, default=8, help="grid columns (a conditional run: samples per class row)")
    s.add_argument("--label", type=int, help="class to sample (conditional runs; default: one row per class)")
    s.add_argument("--decode", choices=text_cli.DECODE_METHODS,
                   help="text runs: how words are chosen (default: sample at --temperature)")
    s.add_argument("--beam", type=int, help="text runs, --decode beam: beam width (default 5)")
    s.add_argument("--top-k", type=int, help="text runs, --decode topk: sample among the k likeliest words (default 10)")
    s.set_defaults(func=cmd_sample)

    r = command("reconstruct", "save inputs and their reconstructions")
    run_arg(r)
    r.add_argument("--split", default="test", help="train, val or test")
    r.add_argument("-n", type=int, default=32, help="number of images")
    r.add_argument("--out", help="output .png grid (default reconstructions.png); a text run: .txt "
                                 "(default reconstructions.txt)")
    r.add_argument("--cols", type=int, default=8, help="grid columns")
    r.add_argument("--label", type=int, help="decode every input's code under this class (conditional runs)")
    r.add_argument("--text", action="append", metavar="SENTENCE",
                   help="text runs: reconstruct this sentence (repeatable; default: -n sentences of --split)")
    r.set_defaults(func=cmd_reconstruct)

    i = command("interpolate", "decode straight lines between pairs of posterior means")
    run_arg(i)
    i.add_argument("--split", default="test", help="train, val or test: where the end points come from")
    i.add_argument("--pairs", type=int, default=8, help="number of interpolations (rows)")
    i.add_argument("--steps", type=int, default=10, help="images per interpolation, end points included")
    i.add_argument("--out", help="output .png grid (default interpolations.png); a text run: .txt "
                                 "(default interpolations.txt)")
    i.add_argument("--between", nargs=2, metavar=("FIRST", "SECOND"),
                   help="text runs: the two sentences whose posterior means are interpolated")
    i.add_argument("--method", choices=("lerp", "slerp"), default="lerp",
                   help="straight line (lerp) or spherical (slerp) interpolation")
    i.add_argument("--label", type=int, help="interpolate between examples of this class, decoded under it "
                                              "(conditional runs; default: one pair per class)")
    i.set_defaults(func=cmd_interpolate)

    e = command("evaluate", "importance-sampled NLL, IWAE bounds, active units; writes evaluation.json")
    run_arg(e)
    e.add_argument("--split", default="test", help="train, val or test")
    e.add_argument("--samples", type=int, default=5000, help="importance samples k per example")
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

    tv = command("traverse", "decode sweeps of each latent around a seed image's code")
    run_arg(tv)
    tv.add_argument("--split", default="test", help="train, val or test: where the seed image comes from")
    tv.add_argument("--index", type=int, default=0, help="seed image within the split")
    tv.add_argument("--range", type=float, default=3.0, help="sweep from -range to +range")
    tv.add_argument("--steps", type=int, default=11, help="images per latent")
    tv.add_argument("--dims", type=int, default=0, help="show only the N latents with the most KL (0: all)")
    tv.add_argument("--out", default="traversal.png", help="output .png grid")
    tv.add_argument("--label", type=int, help="seed image and decoding from this class (conditional runs)")
    tv.set_defaults(func=cmd_traverse)

    f = command("info", "show a run's status, final metrics, evaluation results and resolved config")
    f.add_argument("run", help="run directory")
    f.set_defaults(func=cmd_info)

    ps = command("presets", "list the named recipes")
    ps.set_defaults(func=cmd_presets)
    import vaekit.cli.tools as cli_tools  # report, anomaly, embed, arithmetic, latent-map

    cli_tools.register(command, run_arg)
    import vaekit.cli.quality as cli_quality  # quality

    cli_quality.register(command, run_arg)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logger = logging.getLogger("vaekit")  # only vaekit's own messages; JAX's INFO chatter stays off
    logger.setLevel(logging.INFO)
    handler = _rich_handler()
    logger.addHandler(handler)  # removed again on return, so main() can be called repeatedly
    logger.propagate = False
    try:
        return _run(args)
    except KeyboardInterrupt:  # a Ctrl-C after `_run` dealt with the first one (its message is printed)
        return EXIT_INTERRUPTED
    finally:
        logger.removeHandler(handler)


def _run(args) -> int:
    try:
        args.func(args)
    except VaekitError as e:
        if args.debug:
            raise
        print(f"vaekit: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt as e:
        run_dir = getattr(e, "run_dir", None)
        if run_dir is not None:
            print(f"vaekit: interrupted; continue with `vaekit train --resume {run_dir}`", file=sys.stderr)
        elif args.command == "train":
            print("vaekit: interrupted before training started; nothing was kept", file=sys.stderr)
        else:
            print("vaekit: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # an internal error: one line unless --debug
        if args.debug:
            raise
        print(f"vaekit: internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_INTERNAL
    return 0


def _rich_handler():
    from rich.logging import RichHandler

    return RichHandler(console=_console(), show_time=False, show_path=False, markup=False)


def entry() -> None:
    """The `vaekit` command (and `python -m vaekit.cli`): the process's CPU settings
    (`vaekit.runtime.configure`, before JAX is imported), `main`, then `exit_now` with its status."""
    from vaekit import runtime

    runtime.configure()
    exit_now(main())


def exit_now(code: int) -> None:
    """End the process with `code` without the interpreter's teardown.

    Python's own exit clears every module and collects every object before the process ends:
    0.35-0.5 s once JAX, Flax, Orbax and matplotlib are loaded: 4% of a warm 10-epoch mnist-mlp
    run, 15% of a warm one-epoch run on 1,000 images (docs/results.md). A command has closed what it wrote
    by then (run files are written atomically; the trainer closes its checkpointer and TensorBoard
    writer), so this does what a normal exit does before the teardown: join the threads that are
    not daemons (after waking idle executor workers, as `threading` does at exit), run the atexit
    handlers (JAX's clean-up, jax.distributed's shutdown, logging's flush), flush stdout and
    stderr; then `os._exit`. `main` itself returns normally, for callers in Python (the tests).
    """
    shutdown = getattr(threading, "_shutdown", None)  # what the interpreter calls first at exit
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said
            pass
    os._exit(code)

