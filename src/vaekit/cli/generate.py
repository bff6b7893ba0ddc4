"""Commands that draw from a trained model: sample, reconstruct, interpolate, traverse.

These handlers make pictures; a run trained on token data goes to the sentence handlers of
`vaekit.cli.text` instead (the parser's one image/text dispatch decides, before a handler runs).
"""

from __future__ import annotations

import sys
from pathlib import Path

from vaekit.cli.common import check_split, load, positive, run_arg
from vaekit.cli.text import DECODE_METHODS
from vaekit.errors import VaekitError
from vaekit.runs.layout import check_out


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


def _split_arrays(run, split: str, n: int | None, label: int | None = None):
    """(x, y) of the first n examples of a split, or of its examples of class `label`."""
    check_split(split)
    data = run.data().examples(split, None if label is not None and split != "train" else n)
    x, y = data["x"], data.get("y")
    if label is not None:
        x, y = _of_class(x, y, label, n)
    return x, y


def _labels(run, y):
    """Labels to pass the model: the data's for a conditional model, none for any other."""
    import jax.numpy as jnp

    return jnp.asarray(y) if run.model.capabilities.conditional and y is not None else None


def cmd_sample(args) -> None:
    import jax.numpy as jnp
    from flax import nnx

    from vaekit.training.pictures import sample_grid

    positive(args.n, "-n")
    positive(args.temperature, "--temperature")
    out = check_out(args.out or "samples.png", (".png", ".npy"))
    run = load(args)
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


def cmd_reconstruct(args) -> None:
    import jax.numpy as jnp
    import numpy as np

    from vaekit import plots

    positive(args.n, "-n")
    out = check_out(args.out or "reconstructions.png", (".png",))
    run = load(args)
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
    from vaekit.evaluate.latent import interpolate
    from vaekit.models import require

    out = check_out(args.out or "interpolations.png", (".png",))
    if args.steps < 2 or args.pairs < 1:
        raise VaekitError("--steps must be >= 2 and --pairs >= 1")
    run = load(args)
    require(run.model, "latent_vector", "vaekit interpolate")
    _check_label(run, args.label)
    if run.model.capabilities.conditional and args.label is None:  # a pair's ends share the class it is decoded under
        x, y = _split_arrays(run, args.split, None)
        parts = [_of_class(x, y, int(c), 2) for c in np.unique(y)[: args.pairs]]
        x, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    else:
        x, y = _split_arrays(run, args.split, 2 * args.pairs, args.label)
    if len(x) % 2:
        x, y = x[:-1], None if y is None else y[:-1]
    y = _labels(run, y)
    mu = np.asarray(run.model.encode(jnp.asarray(x), y).mean)  # (2P, D)
    z = interpolate(mu[0::2], mu[1::2], args.steps, args.method).astype(np.float32)  # (P, steps, D)
    yz = None if y is None else jnp.repeat(y[0::2], args.steps)
    images = np.asarray(run.model.decode(jnp.asarray(z.reshape(-1, z.shape[-1])), yz).mean())
    plots.save_images(out, images, ncols=args.steps, title=f"latent interpolations ({args.method}) between posterior means")
    print(out)


def cmd_traverse(args) -> None:
    from vaekit import plots
    from vaekit.evaluate.traversal import latent_traversal

    out = check_out(args.out, (".png",))
    run = load(args)
    _check_label(run, args.label)
    x, y = _split_arrays(run, args.split, 1000, args.label)
    images, labels, values = latent_traversal(run.model, x, None if y is None else _labels(run, y), index=args.index,
                                              steps=args.steps, span=args.range, dims=args.dims)
    plots.save_traversal(out, images, labels, values)
    print(out)


def _out_arg(sp, what: str, name: str) -> None:
    """--out of a command whose default file depends on the run: NAME.png, or NAME.txt for a text run."""
    sp.add_argument("--out", help=f"output {what} (default {name}.png); a text run: .txt (default {name}.txt)")


def register(command) -> None:
    """Add sample, reconstruct, interpolate and traverse: command(name, help) -> subparser."""
    s = command("sample", "draw samples from the prior and save a grid (.png) or array (.npy)")
    run_arg(s)
    s.add_argument("-n", type=int, default=64, help="number of samples")
    _out_arg(s, ".png grid or .npy array", "samples")
    s.add_argument("--temperature", type=float, default=1.0,
                   help="prior standard deviation multiplier (text runs: the softmax temperature of sampled words)")
    s.add_argument("--seed", type=int, default=0, help="seed of the prior draws")
    s.add_argument("--cols", type=int, default=8, help="grid columns (a conditional run: samples per class row)")
    s.add_argument("--label", type=int, help="class to sample (conditional runs; default: one row per class)")
    s.add_argument("--decode", choices=DECODE_METHODS,
                   help="text runs: how words are chosen (default: sample at --temperature)")
    s.add_argument("--beam", type=int, help="text runs, --decode beam: beam width (default 5)")
    s.add_argument("--top-k", type=int, help="text runs, --decode topk: sample among the k likeliest words (default 10)")
    s.set_defaults(func=cmd_sample)

    r = command("reconstruct", "save inputs and their reconstructions")
    run_arg(r)
    r.add_argument("--split", default="test", help="train, val or test")
    r.add_argument("-n", type=int, default=32, help="number of images")
    _out_arg(r, ".png grid", "reconstructions")
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
    _out_arg(i, ".png grid", "interpolations")
    i.add_argument("--between", nargs=2, metavar=("FIRST", "SECOND"),
                   help="text runs: the two sentences whose posterior means are interpolated")
    i.add_argument("--method", choices=("lerp", "slerp"), default="lerp",
                   help="straight line (lerp) or spherical (slerp) interpolation")
    i.add_argument("--label", type=int, help="interpolate between examples of this class, decoded under it "
                                              "(conditional runs; default: one pair per class)")
    i.set_defaults(func=cmd_interpolate)

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
