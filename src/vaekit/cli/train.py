"""Commands about runs as a whole: train (a new run, or --resume), info (a run's status and
results), presets (the named recipes).

`train` is the one place the CLI calls `vaekit`'s `train()`.
"""

from __future__ import annotations

from pathlib import Path

from vaekit.errors import VaekitError
from vaekit.progress import console


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
        from vaekit.runs import layout

        run_dir = layout.check_run_dir(args.resume)
        if args.preset or args.config:
            raise VaekitError("--resume continues a run with its own config; drop --preset/--config")
        if args.name or args.overwrite:
            raise VaekitError("--resume continues the run in its own directory; drop --name/--overwrite")
        cfg = layout.resume_config(run_dir, args.set)
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

    from vaekit.runs.train import train

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


def cmd_presets(args) -> None:
    from rich.table import Table

    from vaekit.config import DEFAULT_PRESET, list_presets

    table = Table(title="vaekit presets (vaekit train --preset NAME)")
    table.add_column("name")
    table.add_column("description")
    for name, desc in list_presets().items():
        table.add_row(name + (" (default)" if name == DEFAULT_PRESET else ""), desc)
    console().print(table)


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
    from vaekit.runs import layout
    from vaekit.training.sinks import collapse_warning

    run_dir = layout.check_run_dir(args.run)
    info = layout.read_json(run_dir / layout.RUN_FILE)
    cfg = layout.read_config(run_dir)
    history = layout.read_metrics(run_dir)
    out = console()

    # 1. status and progress
    status, detail = layout.run_status(run_dir, info)
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
    data = "arrays given in Python" if info.get("data_origin") == "python" else cfg.data.path or cfg.data.source
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
    out.print(run)

    # 2. final (or latest) metrics
    if history:
        last = history[-1]
        where = f"step {last['step']:,}" if cfg.train.steps is not None and "step" in last else f"epoch {last['epoch']}"
        metrics = _table(f"metrics at {where}", ("metric", "value"))
        for k, v in last.items():
            if not isinstance(v, list) and k not in ("epoch", "step"):
                metrics.add_row(k, _fmt(v))
        out.print(metrics)
        warning = "val/kl_per_dim" in last and collapse_warning(last["val/kl_per_dim"], last.get("val/active_units"),
                                                                cfg.model.latent_dim)
        if warning:
            out.print(f"[bold yellow]warning:[/] {warning}", soft_wrap=True)

    # 3. evaluation results
    _show_results(out, run_dir)

    # 4. the resolved config, last
    table = _table("config (config.yaml)", ("key", "value"))
    for section, values in cfg.to_dict().items():
        if isinstance(values, dict):
            for k, v in values.items():
                table.add_row(f"{section}.{k}", str(v))
        else:
            table.add_row(section, str(values))
    out.print(table)


def _show_results(out, run_dir: Path) -> None:
    """evaluation.json, disentanglement.json and quality.json of a run, where present."""
    from vaekit.runs import layout

    path = run_dir / "evaluation.json"
    if path.exists():
        results = layout.read_json(path)
        table = _table(f"evaluation ({path.name})", ("metric", "value"))
        for key, s in results.items():
            if not isinstance(s, dict):
                continue
            draws = f"k = {s.get('samples', '?')}" if not s.get("mc_error_target") else \
                f"--mc-error {s['mc_error_target']:g}, {s.get('draws_mean', float('nan')):.0f} draws per example"
            label = f"{s.get('split', '?')}, {s.get('examples', '?')} examples, {draws}"
            stale = layout.stale_result(run_dir, s)
            label += f"; {stale}" if stale else ""
            nll = "NLL -log p(x|y)" if s.get("conditional") else "NLL"
            if "nll" in s:
                table.add_row(f"{nll} ({label})", f"{_fmt(s['nll'])} ± {_fmt(s.get('nll_stderr', float('nan')))}")
            for k in ("nll_last_doubling", "elbo", "iwae_k5", "iwae_k50", "bits_per_dim", "perplexity", "kl",
                      "active_units", "reconstruction_mse"):
                if s.get(k) is not None:
                    table.add_row(f"  {k}", _fmt(s[k]))
        out.print(table)
    path = run_dir / "disentanglement.json"
    if path.exists():
        r = layout.read_json(path)
        table = _table(f"disentanglement ({path.name})", ("metric", "score"))
        rows = [("MIG", ("mig", "mig")), ("SAP", ("sap", "sap")), ("DCI disentanglement", ("dci", "disentanglement")),
                ("DCI completeness", ("dci", "completeness")), ("DCI informativeness", ("dci", "informativeness_test")),
                ("FactorVAE score", ("factorvae", "eval_accuracy")), ("beta-VAE score", ("betavae", "eval_accuracy"))]
        for label, (a, b) in rows:
            v = (r.get(a) or {}).get(b) if isinstance(r.get(a), dict) else None
            if v is not None:
                table.add_row(label, _fmt(v))
        out.print(table)
    path = run_dir / "quality.json"
    if path.exists():
        table = _table(f"sample quality ({path.name})", ("metric", "value"))

        def rows(prefix, obj):
            for k, v in obj.items():
                if isinstance(v, dict):
                    rows(f"{prefix}{k}.", v)
                elif isinstance(v, (int, float, str)) and not isinstance(v, bool):
                    table.add_row(f"{prefix}{k}", _fmt(v))

        rows("", layout.read_json(path))
        out.print(table)


def register(command) -> None:
    """Add train, info and presets: command(name, help) -> subparser."""
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

    f = command("info", "show a run's status, final metrics, evaluation results and resolved config")
    f.add_argument("run", help="run directory")
    f.set_defaults(func=cmd_info)

    ps = command("presets", "list the named recipes")
    ps.set_defaults(func=cmd_presets)
