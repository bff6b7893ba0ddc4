"""The run report: one self-contained HTML file per run, or a comparison of several runs.

    vaekit report runs/a                              # runs/a/report.html
    vaekit report runs/a runs/b runs/c --out compare.html

A report shows the config, the training curves (ELBO or loss, reconstruction, KL, learning
rate, beta), the per-dimension KL heatmap over training, samples, reconstructions, lerp and
slerp interpolations and a latent traversal, a PCA scatter of test codes coloured by label with
a linear-probe accuracy (and a decoded latent map for a 2-D latent), and the results of
`vaekit evaluate`, `vaekit disentanglement`, `vaekit anomaly` (and a quality.json) when their
JSON files are in the run directory. A comparison adds a config diff and curves of every run
overlaid, and shows each run's samples and scores side by side.

Everything is inline: pictures are PNG `data:` URIs (matplotlib figures and the run's own
pictures), style is one inline <style>; there is no script and no reference to anything outside
the file, so it opens offline and can be mailed or archived as is. The HTML comes from a
Jinja2 template (`templates/report.html.j2`, autoescaped).

Pictures that need the model (interpolations, traversal, codes) are made from the run's best
checkpoint (`model=False` skips them, and a run without a usable checkpoint gets a note
instead of them).
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import logging
import math
from pathlib import Path

import numpy as np

from vaekit.errors import VaekitError

log = logging.getLogger("vaekit")

RESULT_FILES = {  # file in the run directory -> section title
    "evaluation.json": "Evaluation (vaekit evaluate)",
    "disentanglement.json": "Disentanglement (vaekit disentanglement)",
    "quality.json": "Sample quality",
    "anomaly.json": "Anomaly detection (vaekit anomaly)",
}
RUN_PICTURES = (("samples.png", "Samples"), ("reconstructions.png", "Reconstructions"))
CURVES = (  # (metric, title): ELBO or loss first, whichever the run records
    ("elbo", "ELBO (nats)"), ("recon", "reconstruction (nats)"), ("kl", "KL (nats)"), ("lr", "learning rate"),
    ("beta", "beta"),
)
PROBE_TRAIN, PROBE_TEST = 5000, 2000


# --------------------------------------------------------------------------- small helpers


def data_uri(png: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(png).decode('ascii')}"


def figure_uri(fig) -> str:
    """A matplotlib figure as an inline PNG (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    return data_uri(buf.getvalue())


def _picture_uri(write) -> str:
    """Inline PNG of a picture that a `vaekit.plots` writer puts into a file (`write(path)`)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "picture.png"
        write(path)
        return data_uri(path.read_bytes())


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= _flatten(v, key + ".")
        else:
            out[key] = v
    return out


def _fmt(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4g}" if abs(v) < 1e4 or v == int(v) else f"{v:.6g}"
    if isinstance(v, list):
        if len(v) > 12 and all(isinstance(e, (int, float)) for e in v):
            return f"[{len(v)} values, mean {np.mean(v):.4g}]"
        return "[" + ", ".join(_fmt(e) for e in v) + "]"
    return "null" if v is None else str(v)


def _table(rows: dict) -> list[tuple[str, str]]:
    return [(k, _fmt(v)) for k, v in rows.items()]


# --------------------------------------------------------------------------- one run's contents


def _x_axis(history: list[dict], counted_in_steps: bool) -> tuple[str, list]:
    if counted_in_steps and all("step" in h for h in history):
        return "step", [h["step"] for h in history]
    return "epoch", [h["epoch"] for h in history]


def curves_figure(histories: dict[str, tuple[list[dict], bool]]):
    """Matplotlib figure: one panel per metric of CURVES (ELBO, or loss for a run without one),
    train (solid) and validation (dashed) of every run (one colour each)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = []
    for metric, title in CURVES:
        present = any(f"{s}/{metric}" in h for hist, _ in histories.values() for h in hist for s in ("train", "val"))
        if metric == "elbo" and not present:
            metric, title = "loss", "loss"
            present = any(f"train/{metric}" in h for hist, _ in histories.values() for h in hist)
        if present:
            keys.append((metric, title))
    if not keys:
        return None
    cols = min(3, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    colors = plt.get_cmap("tab10")
    several = len(histories) > 1
    for ax, (metric, title) in zip(axes.ravel(), keys):
        xlabel = "epoch"
        for i, (name, (hist, in_steps)) in enumerate(histories.items()):
            xlabel, xs = _x_axis(hist, in_steps)
            for split, style in (("train", "-"), ("val", "--")):
                ys = [h.get(f"{split}/{metric}") for h in hist]
                if any(isinstance(y, (int, float)) for y in ys):
                    label = f"{name} {split}" if several else split
                    ax.plot(xs, [np.nan if y is None else y for y in ys], style, marker="o", ms=2.5,
                            color=colors(i % 10), label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if metric == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        if ax.get_lines():
            ax.legend(fontsize=7)
    for ax in axes.ravel()[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def _kl_heatmap_uri(history: list[dict]) -> str | None:
    from vaekit import plots

    if not any("val/kl_per_dim" in h for h in history):
        return None
    return _picture_uri(lambda p: plots.save_kl_heatmap(p, history))


def _results(run_dir: Path) -> list[dict]:
    """Tables of the result JSON files that exist: [{"title", "file", "groups": [(name, rows)]}]."""
    from vaekit.runs.layout import read_json, stale_result

    out = []
    for name, title in RESULT_FILES.items():
        path = run_dir / name
        if not path.exists():
            continue
        doc = read_json(path)
        groups = []
        if name == "disentanglement.json":
            groups.append(("scores", _table({k: v for k, v in _flatten(doc).items() if not k.startswith("seconds")})))
        else:
            for key, entry in doc.items():
                stale = stale_result(run_dir, entry) if isinstance(entry, dict) else None  # evaluate's results
                groups.append((f"{key} ({stale})" if stale else key,
                               _table(_flatten(entry) if isinstance(entry, dict) else {key: entry})))
        out.append({"title": title, "file": name, "groups": groups})
    return out


def _model_pictures(run_dir: Path) -> dict:
    """Pictures and numbers that need the model; {"error": message} when it cannot be loaded."""
    import jax.numpy as jnp

    from vaekit import plots

    from vaekit.evaluate import latent
    from vaekit.runs.run import load_run
    from vaekit.evaluate.embed import encode_all, linear_probe
    from vaekit.evaluate.traversal import latent_traversal

    try:
        run = load_run(run_dir)
    except VaekitError as e:
        return {"error": f"no pictures from the model: {e}"}
    out: dict = {"figures": []}
    caps = run.model.capabilities
    if not caps.latent_vector:
        out["error"] = f"model.kind '{run.config.model.kind}' has no continuous latent vector: no latent pictures"
        return out
    splits = run.data()
    test = splits.examples("test", PROBE_TEST)
    x, y = test["x"], test.get("y")
    cond = y if caps.conditional else None
    if caps.conditional and y is None:
        out["error"] = "a conditional run whose test split has no labels: no latent pictures"
        return out
    z, _ = encode_all(run, x, y)
    images = splits.spec.is_images
    if images:
        pairs = min(6, len(x) // 2)
        if caps.conditional:  # both ends of a pair of one class, decoded under it
            idx = np.concatenate([np.flatnonzero(y == c)[:2] for c in np.unique(y) if np.sum(y == c) >= 2][:pairs])
        else:
            idx = np.arange(2 * pairs)
        for method in ("lerp", "slerp"):
            zs = latent.interpolate(z[idx[0::2]], z[idx[1::2]], 10, method).astype(np.float32)  # (P, 10, D)
            yz = None if cond is None else jnp.repeat(jnp.asarray(y[idx[0::2]]), 10)
            pics = np.asarray(run.model.decode(jnp.asarray(zs.reshape(-1, z.shape[1])), yz).mean())
            title = f"{method} between posterior means of pairs of test examples"
            out["figures"].append({"id": f"interp-{method}", "title": f"Interpolations ({method})",
                                   "uri": _picture_uri(lambda p, im=pics, t=title: plots.save_images(p, im, 10, t))})
        trav, labels, values = latent_traversal(run.model, x[:500], None if cond is None else cond[:500],
                                                steps=9, dims=min(10, z.shape[1]))
        out["figures"].append({"id": "traversal", "title": "Latent traversal (10 latents with the most KL)",
                               "uri": _picture_uri(lambda p: plots.save_traversal(p, trav, labels, values))})
        if run.model.latent_dim == 2 and not caps.conditional:
            out["figures"].append({"id": "latent-map", "title": "Latent map (2-D latent)",
                                   "uri": _picture_uri(lambda p: latent.save_latent_map(p, run, n=16))})
    out["pca"] = _picture_uri(lambda p: latent.save_pca_scatter(
        p, z, y, f"test posterior means ({len(z)} examples), PCA, coloured by label"))
    if y is not None and len(np.unique(y)) > 1 and not caps.conditional:
        train = splits.examples("train", PROBE_TRAIN)
        if "y" in train and len(np.unique(train["y"])) > 1:
            z_tr, _ = encode_all(run, train["x"], train["y"])
            out["probe"] = linear_probe(z_tr, train["y"], z, y)
    return out


def run_contents(run_dir: str | Path, *, model: bool = True) -> dict:
    """Everything the template shows of one run (a dict of strings, tables and data URIs)."""
    from vaekit.runs import layout

    run_dir = layout.check_run_dir(run_dir)
    cfg = layout.read_config(run_dir)
    info = layout.read_json(run_dir / layout.RUN_FILE)
    history = layout.read_metrics(run_dir)
    cfg_dict = cfg.to_dict()
    in_steps = cfg.train.steps is not None
    final = info.get("final") or (history[-1] if history else {})
    status = {k: info[k] for k in ("status", "model_kind", "epoch", "step", "num_train", "best_metric", "best", "error",
                                   "vaekit_version") if k in info}
    if "data_spec" in info:
        status["data"] = ", ".join(f"{k} {v}" for k, v in info["data_spec"].items() if v is not None)
    fig = curves_figure({run_dir.name: (history, in_steps)}) if history else None
    contents = {
        "name": run_dir.name,
        "path": str(run_dir.absolute()),
        "config": _flatten(cfg_dict),
        "config_sections": [(sec, _table(v if isinstance(v, dict) else {sec: v})) for sec, v in cfg_dict.items()],
        "status_rows": _table(status),
        "final_rows": _table({k: v for k, v in final.items() if not isinstance(v, list)}),
        "final": final,
        "history": history,
        "in_steps": in_steps,
        "curves": None if fig is None else figure_uri(fig),
        "kl_heatmap": _kl_heatmap_uri(history),
        "pictures": [{"id": f.split(".")[0], "title": t, "uri": data_uri((run_dir / f).read_bytes())}
                     for f, t in RUN_PICTURES if (run_dir / f).is_file()],
        "results": _results(run_dir),
        "evaluation": layout.read_json(run_dir / "evaluation.json") if (run_dir / "evaluation.json").exists() else {},
        "model": _model_pictures(run_dir) if model else {"error": "pictures from the model were not asked for"},
    }
    return contents


# --------------------------------------------------------------------------- comparison


def config_diff(configs: dict[str, dict]) -> list[tuple[str, list[str]]]:
    """[(key, [value in each run])] for the flattened config keys whose values differ between runs."""
    keys = sorted(set().union(*[c.keys() for c in configs.values()]))
    rows = []
    for k in keys:
        vals = [c.get(k, "(absent)") for c in configs.values()]
        if any(v != vals[0] for v in vals[1:]):
            rows.append((k, [_fmt(v) for v in vals]))
    return rows


def _scores_table(runs: list[dict]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Final validation metrics and the latest evaluation of every run, one column per run."""
    names = ["val/elbo", "val/loss", "val/recon", "val/kl", "val/active_units", "train/examples_per_s"]
    rows = []
    for k in names:
        vals = [r["final"].get(k) for r in runs]
        if any(v is not None for v in vals):
            rows.append((k, [_fmt(v) if v is not None else "" for v in vals]))
    evals = [next(reversed(r["evaluation"].values()), {}) if r["evaluation"] else {} for r in runs]
    for k in ("nll", "elbo", "iwae_k50", "bits_per_dim", "active_units", "reconstruction_mse"):
        vals = [e.get(k) for e in evals]
        if any(v is not None for v in vals):
            rows.append((f"evaluate: {k}", [_fmt(v) if v is not None else "" for v in vals]))
    for r in runs:
        probe = r["model"].get("probe")
        if probe:
            break
    else:
        return [r["name"] for r in runs], rows
    rows.append(("linear probe accuracy", [_fmt(r["model"]["probe"]["accuracy"]) if r["model"].get("probe") else ""
                                           for r in runs]))
    return [r["name"] for r in runs], rows


# --------------------------------------------------------------------------- rendering


def _environment():
    import jinja2

    return jinja2.Environment(loader=jinja2.PackageLoader("vaekit.report", "templates"),
                              autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True)


def render(run_dirs: list[str | Path], *, model: bool = True) -> str:
    """The report's HTML for one run, or the comparison of several."""
    if not run_dirs:
        raise VaekitError("vaekit report needs at least one run directory")
    runs = [run_contents(d, model=model) for d in run_dirs]
    names = [r["name"] for r in runs]
    if len(set(names)) < len(names):  # two runs of one name from different parents: use their paths
        for r in runs:
            r["name"] = r["path"]
    compare = None
    if len(runs) > 1:
        fig = curves_figure({r["name"]: (r["history"], r["in_steps"]) for r in runs if r["history"]})
        columns, score_rows = _scores_table(runs)
        compare = {"diff": config_diff({r["name"]: r["config"] for r in runs}), "columns": columns,
                   "curves": None if fig is None else figure_uri(fig), "scores": score_rows}
    from vaekit._version import version

    return _environment().get_template("report.html.j2").render(
        runs=runs, compare=compare, title=("vaekit report: " + runs[0]["name"]) if len(runs) == 1 else
        f"vaekit comparison of {len(runs)} runs", generated=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        version=version())


def write_report(run_dirs: list[str | Path], out: str | Path | None = None, *, model: bool = True) -> Path:
    """Write the report (one run: default <run>/report.html; several: default compare.html) and
    return its path. The HTML is rendered whole before anything is written, then written to a
    temporary file that is renamed into place: an error leaves no partial report."""
    from vaekit.runs import layout

    if not run_dirs:
        raise VaekitError("vaekit report needs at least one run directory")
    for d in run_dirs:  # before any work: the cheap checks
        layout.check_run_dir(d)
    if out is None:
        out = Path(run_dirs[0]) / "report.html" if len(run_dirs) == 1 else Path("compare.html")
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise VaekitError(f"--out must end in .html, got '{out}'")
    if not out.parent.exists():
        raise VaekitError(f"directory '{out.parent}' for --out does not exist")
    if out.is_dir():
        raise VaekitError(f"--out '{out}' is a directory")
    text = render(run_dirs, model=model)
    layout.write_text_atomic(out, text)
    return out


def external_references(text: str) -> list[str]:
    """Every src/href value of an HTML text that is neither a data: URI nor a #fragment (what a
    self-contained page must not have)."""
    import re

    values = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", text, flags=re.IGNORECASE)
    values += re.findall(r"""url\(\s*["']?([^"')]+)""", text, flags=re.IGNORECASE)
    return [html.unescape(v) for v in values if not (v.startswith("data:") or v.startswith("#"))]


__all__ = ["RESULT_FILES", "config_diff", "curves_figure", "external_references", "render", "run_contents",
           "write_report"]
