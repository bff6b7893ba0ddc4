"""`vaekit sample / reconstruct / interpolate` for text runs (token data): sentences in, sentences out.

`HANDLERS` is the CLI's one table of text handlers: the parser sends a command named there to its
handler here when the run's data spec is token data (never by model name), and to the command's
image handler otherwise. Everything a text run cannot do is a one-line VaekitError. Decoding runs
compiled (`jax.jit` over the model's scanned decoders), sentences are printed one per line and
saved to a .txt file.
"""

from __future__ import annotations

from pathlib import Path

from vaekit.cli.common import check_split, load, positive
from vaekit.errors import VaekitError
from vaekit.runs.layout import check_out, write_text_atomic

DECODE_METHODS = ("sample", "greedy", "topk", "beam")  # vaekit sample --decode: TextVAE.generate's, and beam_search
TEXT_FLAGS = (("text", "--text"), ("between", "--between"), ("decode", "--decode"), ("beam", "--beam"),
              ("top_k", "--top-k"))


def is_text_run(path) -> bool:
    """Whether the run directory at `path` was trained on token data (read from run.json, no model loaded)."""
    from vaekit.runs import layout
    from vaekit.data.spec import DataSpec

    run_dir = layout.check_run_dir(path)
    return DataSpec.from_run_info(layout.read_json(run_dir / layout.RUN_FILE)).kind == "tokens"


def reject_text_flags(args, command: str) -> None:
    """One line when a text-only flag is given for an image run."""
    for attr, flag in TEXT_FLAGS:
        if getattr(args, attr, None) is not None:
            raise VaekitError(f"{flag} applies to text runs; run '{args.run}' was not trained on text "
                              f"(vaekit {command} there makes pictures)")


def _no_label(args) -> None:
    if getattr(args, "label", None) is not None:
        raise VaekitError(f"--label needs a run with class labels; run '{args.run}' is a text run (sentences have "
                          f"no labels)")


def _out(args, default: str) -> Path:
    return check_out(args.out or default, (".txt",))


def _compiled(model, fn):
    """jit(fn(model, *args)) over the model's split state: one compilation per shape."""
    import jax
    from flax import nnx

    graphdef, state = nnx.split(model)
    jitted = jax.jit(lambda st, *a: fn(nnx.merge(graphdef, st), *a))
    return lambda *a: jitted(state, *a)


def _save(out: Path, lines: list[str]) -> None:
    """The sentences into `out`, one per line (an empty sentence an empty line), and on stdout, where
    an empty sentence (<eos> first) shows as "(empty)", then the file's path."""
    write_text_atomic(out, "".join(line + "\n" for line in lines))
    for line in lines:
        print(line or "(empty)")
    print(out)


def _load(args):
    """The run and its vocabulary."""
    from vaekit.data.text import run_vocabulary

    run = load(args)
    return run, run_vocabulary(run)


def cmd_sample(args) -> None:
    """Sentences from the prior: sampled at --temperature, top-k, greedy or beam-searched."""
    import jax

    positive(args.n, "-n")
    positive(args.temperature, "--temperature")
    _no_label(args)
    method = args.decode or "sample"
    out = _out(args, "samples.txt")
    beam = 5 if args.beam is None else args.beam
    if method == "beam" and beam < 1:
        raise VaekitError(f"--beam must be >= 1, got {beam}")
    if args.beam is not None and method != "beam":
        raise VaekitError("--beam applies to --decode beam")
    if args.top_k is not None and method != "topk":
        raise VaekitError("--top-k applies to --decode topk")
    run, vocab = _load(args)
    model = run.model
    key = jax.random.PRNGKey(args.seed)
    z = model.latent_codes(args.n, jax.random.fold_in(key, 0))
    if method == "beam":
        ids, _ = _compiled(model, lambda m, z: m.beam_search(z, beam))(z)
    else:
        top_k = args.top_k if args.top_k is not None else 10
        if method == "topk" and not 0 < top_k <= len(vocab):
            raise VaekitError(f"--top-k must be in [1, {len(vocab)}] (the vocabulary), got {top_k}")
        ids = _compiled(model, lambda m, z, k: m.generate(z, method=method, key=k, temperature=args.temperature,
                                                          top_k=top_k))(z, jax.random.fold_in(key, 1))
    _save(out, vocab.decode(jax.device_get(ids)))


def _sentences(args, run, vocab) -> tuple[list[str], dict]:
    """The --text sentences, else the first -n of --split, with their encoded batch."""
    import numpy as np

    if args.text:
        return list(args.text), vocab.encode(args.text)
    check_split(args.split)
    data = run.data().examples(args.split, args.n)
    return vocab.decode(data["x"]), {k: np.asarray(v) for k, v in data.items()}


def cmd_reconstruct(args) -> None:
    """Each sentence and the greedy decoding of its posterior mean, as "input => output" lines."""
    import jax
    import jax.numpy as jnp

    from vaekit.models import require

    positive(args.n, "-n")
    _no_label(args)
    out = _out(args, "reconstructions.txt")
    run, vocab = _load(args)
    require(run.model, "latent_vector", "vaekit reconstruct --text")
    texts, batch = _sentences(args, run, vocab)
    ids = _compiled(run.model, lambda m, x: m.reconstruct(x))(jnp.asarray(batch["x"]))
    outputs = vocab.decode(jax.device_get(ids))
    _save(out, [f"{a}  =>  {b}" for a, b in zip(texts, outputs)])


def cmd_interpolate(args) -> None:
    """A homotopy (Bowman et al. section 5): greedy sentences along the line between two posterior means."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from vaekit.evaluate.latent import interpolate
    from vaekit.models import require

    _no_label(args)
    if args.steps < 2:
        raise VaekitError("--steps must be >= 2")
    if not args.between:
        raise VaekitError('a text run interpolates between two sentences: give --between "first" "second"')
    out = _out(args, "interpolations.txt")
    run, vocab = _load(args)
    require(run.model, "latent_vector", "vaekit interpolate")
    batch = vocab.encode(list(args.between))
    mu = np.asarray(_compiled(run.model, lambda m, x: m.encode(x).mean)(jnp.asarray(batch["x"])))  # (2, D)
    z = interpolate(mu[:1], mu[1:], args.steps, args.method).astype(np.float32)[0]  # (steps, D)
    ids = _compiled(run.model, lambda m, z: m.generate(z, method="greedy"))(jnp.asarray(z))
    _save(out, vocab.decode(jax.device_get(ids)))


def cmd_traverse(args) -> None:
    raise VaekitError(f"vaekit traverse draws images; run '{args.run}' is a text run (use vaekit interpolate "
                      f"--between \"a\" \"b\")")


# command -> its handler for a run trained on token data; the parser dispatches on this table only
HANDLERS = {"sample": cmd_sample, "reconstruct": cmd_reconstruct, "interpolate": cmd_interpolate,
            "traverse": cmd_traverse}
