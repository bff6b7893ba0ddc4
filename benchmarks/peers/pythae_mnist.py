"""Peer benchmark: Pythae 0.1.2 (PyTorch) on the MNIST VAE that vaekit calls ``mnist-mlp``.

Runs in its own virtual environment, ``.venv-bench`` (see ``benchmarks/README.md``),
and imports nothing from vaekit: it reads MNIST itself from the gzip IDX files in
``src/vaekit/data/mnist/``. vaekit's benchmark scripts call it as a subprocess through
``benchmarks/common.py:run_peer`` and read its JSON, so both libraries are measured in
the same run on the same machine.

The model
---------
The architecture of vaekit's ``mnist-mlp`` preset, written as Pythae custom networks:

* encoder 784-200-200-100 (tanh between layers, none after the last); the 100 outputs
  are split into the posterior mean (50) and log-variance (50), as vaekit does with
  one dense layer to ``2 * latent_dim`` outputs;
* decoder 50-200-200-784 (tanh), sigmoid on the output: Pythae's ``"bce"``
  reconstruction loss takes *probabilities*, not logits;
* ``VAEConfig(input_dim=(1, 28, 28), latent_dim=50, reconstruction_loss="bce")``.

Layers keep PyTorch's default initialisation (``nn.Linear``: uniform weights and biases
of scale 1/sqrt(fan_in)); vaekit's Flax layers use LeCun-normal kernels and zero biases.
This changes nothing in the throughput and little in the final likelihood.

Data: train = the first 50,000 training images, validation = the last 10,000, test =
the 10,000 t10k images, pixels scaled to [0, 1] and *statically* binarized: one draw
``u < x`` with ``u = np.random.default_rng(seed).random(x.shape, dtype=np.float32)``,
per split, with the same seed for each split. This is exactly vaekit's
``binarize_fixed`` (``data.binarize: static``), so with the same seed both libraries
see the same binary images (train, validation and test alike).

What Pythae does, read from its source (pythae 0.1.2)
-----------------------------------------------------
``pythae/models/vae/vae_model.py``:

* ``VAE.loss_function`` with ``"bce"``:
  ``F.binary_cross_entropy(recon_x, x, reduction="none").sum(dim=-1)`` -- summed over the
  784 pixels -- plus the analytic KL ``-0.5 * sum(1 + log_var - mu^2 - exp(log_var))``
  summed over the 50 latents; the loss is ``(recon + KL).mean(dim=0)``, the mean over
  the batch. So the training loss is the negative ELBO in nats per image, one
  reparameterised sample per image, the same objective as vaekit's ``elbo``.
  ``F.binary_cross_entropy`` clamps each ``log`` at -100, so a saturated sigmoid costs
  at most 100 nats per pixel instead of infinity or NaN.
* ``VAE.get_nll(data, n_samples, batch_size)`` is the standard importance-sampled
  estimate with the posterior as proposal: for each image, ``log mean_k exp(log p(x|z_k)
  + log p(z_k) - log q(z_k|x))`` with ``z_k ~ q(z|x)`` (the ``-D/2 log 2 pi`` of the prior
  and of q cancel, so both are left out), computed with ``logsumexp - log K``. It
  returns the *mean log-likelihood* (a negative number); the NLL reported here is its
  negation. Quirks:

  - it loops over the images one at a time in Python, repeating each image into a
    batch of ``batch_size`` copies;
  - the number of samples actually drawn is ``batch_size * max(1, n_samples //
    batch_size)``: with ``n_samples <= batch_size`` it draws ``batch_size`` samples (not
    ``n_samples``), and a remainder of ``n_samples`` over ``batch_size`` is dropped.
    This script passes ``batch_size`` so that exactly ``n_samples`` are drawn
    (``batch_size = n_samples`` by default) and reports the K actually used;
  - it does not disable autograd: unless the caller wraps it in ``torch.no_grad()``,
    every forward pass records a graph. The default here calls it as shipped
    (``--nll-no-grad`` wraps it, to see what that costs);
  - it does not call ``model.eval()`` (irrelevant here: no dropout or batch norm).

``pythae/trainers/base_trainer/base_trainer.py`` (``BaseTrainer``):

* a ``DataLoader`` over a ``BaseDataset`` with ``shuffle=True`` for the training set
  *and* for the eval set, batches assembled one example at a time (``__getitem__`` +
  ``default_collate`` of ``DatasetOutput`` dicts), ``num_workers=0``;
  the last partial batch is kept (not an issue here: 50,000 and 10,000 are multiples of 100);
* each epoch: one pass over the training set (a step per batch), then -- when an eval
  set is given -- a full pass over it under ``torch.no_grad()``; whenever the eval loss
  improves, the model is ``deepcopy``-ed as the "best model", and that best model
  (not the last one) is what Pythae saves at the end as ``final_model``.
  There is no separate train/validation split inside Pythae: the eval set is whatever
  the caller passes (here the last 10,000 training images).
* ``set_seed(training_config.seed)`` (random, numpy, torch) is called at the start of
  ``train()``, i.e. *after* the model is built, so this script seeds torch itself
  before building the model as well.
* a tqdm progress bar and a console logger are always attached.

Throughput
----------
A timing callback records, per epoch, the training pass (from ``on_train_step_begin``
to ``on_eval_step_begin``: 500 optimizer steps on 50,000 examples, including
Pythae's data loading and its per-step callbacks) and the evaluation pass (from
``on_eval_step_begin`` to ``on_epoch_end``: 100 forward passes on 10,000 examples,
plus the best-model ``deepcopy``). Epoch 1 is excluded whenever more than one epoch
runs (``warmup_excluded: true``), so one-off costs (first allocations, thread-pool
start-up) do not count; with ``--epochs 1`` epoch 1 is all there is.

* ``examples_per_s``: training examples / training-pass seconds (the number to put
  beside vaekit's training throughput: steps on 50,000 examples per epoch);
* ``epoch_examples_per_s``: (50,000 + 10,000) / whole-epoch seconds, counting the
  evaluation pass's examples too;
* ``train_examples_per_s_incl_eval``: 50,000 / whole-epoch seconds (training examples
  per second of wall clock, validation included as overhead).

CLI::

    .venv-bench/bin/python benchmarks/peers/pythae_mnist.py --epochs 2 \\
        --nll-samples 1000 --nll-limit 1000 --seed 0 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

#: Where the MNIST IDX files live, relative to the repository root.
DEFAULT_MNIST_DIR = Path(__file__).resolve().parents[2] / "src" / "vaekit" / "data" / "mnist"

NUM_TRAIN = 50_000
IMAGE_SHAPE = (1, 28, 28)
LATENT_DIM = 50
HIDDEN = (200, 200)


# --------------------------------------------------------------------------- data


def read_idx(path: str | Path) -> np.ndarray:
    """Parse one gzip-compressed IDX file (unsigned-byte data) into a uint8 array."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    data = np.frombuffer(raw, dtype=np.uint8, offset=offset)
    if data.size != math.prod(dims):
        raise ValueError(f"{path}: header says {dims}, found {data.size} values")
    return data.reshape(dims)


def load_mnist(directory: str | Path = DEFAULT_MNIST_DIR) -> dict[str, np.ndarray]:
    """Return {"train", "val", "test"}: float32 (N, 1, 28, 28) in [0, 1].

    train = first 50,000 training images, val = last 10,000, test = the 10,000 t10k images.
    """
    directory = Path(directory)
    train = read_idx(directory / "train-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    test = read_idx(directory / "t10k-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    train = train.reshape(-1, *IMAGE_SHAPE)
    test = test.reshape(-1, *IMAGE_SHAPE)
    return {"train": train[:NUM_TRAIN], "val": train[NUM_TRAIN:], "test": test}


def binarize_fixed(x: np.ndarray, seed: int) -> np.ndarray:
    """One Bernoulli draw per pixel: ``u < x``, u ~ U[0, 1) float32 from default_rng(seed).

    Same draws as vaekit's ``vaekit.data.binarize_fixed`` (row-major order, so the result
    for ``x[:k]`` is the first k rows of the result for ``x``).
    """
    rng = np.random.default_rng(seed)
    u = rng.random(x.shape, dtype=np.float32)
    return np.less(u, x, out=u)


# --------------------------------------------------------------------------- model


def _torch_modules():
    """Import torch/pythae lazily so ``--help`` and the data helpers work without them."""
    import torch
    from torch import nn
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder

    class MLPEncoder(BaseEncoder):
        """784-200-200-(2*50) tanh MLP; returns the posterior mean and log-variance."""

        def __init__(self, hidden=HIDDEN, latent_dim=LATENT_DIM):
            BaseEncoder.__init__(self)
            sizes = (math.prod(IMAGE_SHAPE), *hidden)
            layers: list = []
            for a, b in zip(sizes[:-1], sizes[1:]):
                layers += [nn.Linear(a, b), nn.Tanh()]
            layers.append(nn.Linear(sizes[-1], 2 * latent_dim))
            self.net = nn.Sequential(*layers)

        def forward(self, x):
            h = self.net(x.reshape(x.shape[0], -1))
            mean, log_var = torch.chunk(h, 2, dim=-1)
            return ModelOutput(embedding=mean, log_covariance=log_var)

    class MLPDecoder(BaseDecoder):
        """50-200-200-784 tanh MLP; returns Bernoulli probabilities (sigmoid of the logits)."""

        def __init__(self, hidden=HIDDEN, latent_dim=LATENT_DIM):
            BaseDecoder.__init__(self)
            sizes = (latent_dim, *reversed(hidden), math.prod(IMAGE_SHAPE))
            layers: list = []
            for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
                layers.append(nn.Linear(a, b))
                if i < len(sizes) - 2:
                    layers.append(nn.Tanh())
            self.net = nn.Sequential(*layers)

        def forward(self, z):
            logits = self.net(z)
            return ModelOutput(reconstruction=torch.sigmoid(logits).reshape(z.shape[0], *IMAGE_SHAPE))

    return torch, MLPEncoder, MLPDecoder


def build_model(seed: int = 0):
    """Pythae ``VAE`` with the mnist-mlp encoder/decoder, parameters drawn under ``seed``."""
    torch, MLPEncoder, MLPDecoder = _torch_modules()
    from pythae.models import VAE, VAEConfig

    torch.manual_seed(seed)
    config = VAEConfig(input_dim=IMAGE_SHAPE, latent_dim=LATENT_DIM, reconstruction_loss="bce")
    return VAE(model_config=config, encoder=MLPEncoder(), decoder=MLPDecoder())


# --------------------------------------------------------------------------- training


def _timing_callback():
    from pythae.trainers.training_callbacks import TrainingCallback

    class EpochTimer(TrainingCallback):
        """Wall-clock times of each epoch's training pass and evaluation pass."""

        def __init__(self):
            self.train_s: list[float] = []
            self.eval_s: list[float] = []
            self.epoch_s: list[float] = []
            self._epoch0 = self._train0 = self._eval0 = None

        def on_epoch_begin(self, training_config, **kwargs):
            self._epoch0 = time.perf_counter()

        def on_train_step_begin(self, training_config, **kwargs):
            # Called once per epoch, right before the loop over the training batches.
            self._train0 = time.perf_counter()

        def on_eval_step_begin(self, training_config, **kwargs):
            # Called once per epoch, after the training loop, before the eval loop.
            self._eval0 = time.perf_counter()
            self.train_s.append(self._eval0 - self._train0)

        def on_epoch_end(self, training_config, **kwargs):
            t = time.perf_counter()
            if self._eval0 is not None:
                self.eval_s.append(t - self._eval0)
            self.epoch_s.append(t - self._epoch0)
            self._eval0 = None

    return EpochTimer()


def train(model, data: dict[str, np.ndarray], *, epochs: int, seed: int = 0, learning_rate: float = 1e-3,
          batch_size: int = 100, quiet: bool = False) -> dict:
    """Train ``model`` with Pythae's ``BaseTrainer``; return timings and losses.

    ``data`` holds binarized float32 arrays "train" and "val" of shape (N, 1, 28, 28).
    Returns a dict with the trained model (``"model"``: Pythae's best-on-eval model,
    the one it saves as final), the per-epoch timings and the derived throughputs.
    """
    import torch
    from pythae.data.datasets import BaseDataset
    from pythae.trainers import BaseTrainer, BaseTrainerConfig

    train_set = BaseDataset(torch.from_numpy(data["train"]), torch.zeros(len(data["train"])))
    val_set = BaseDataset(torch.from_numpy(data["val"]), torch.zeros(len(data["val"])))
    timer = _timing_callback()
    with tempfile.TemporaryDirectory(prefix="pythae-bench-") as out_dir:
        config = BaseTrainerConfig(
            output_dir=out_dir,
            num_epochs=epochs,
            learning_rate=learning_rate,
            per_device_train_batch_size=batch_size,
            per_device_eval_batch_size=batch_size,
            optimizer_cls="Adam",
            seed=seed,
            no_cuda=True,
        )
        with _quiet(quiet):
            trainer = BaseTrainer(model=model, train_dataset=train_set, eval_dataset=val_set,
                                  training_config=config, callbacks=[timer])
            t0 = time.perf_counter()
            trainer.train()
            total_s = time.perf_counter() - t0
        best = trainer._best_model

    n_train, n_val = len(data["train"]), len(data["val"])
    skip = 1 if epochs > 1 else 0
    train_s = sum(timer.train_s[skip:])
    eval_s = sum(timer.eval_s[skip:])
    epoch_s = sum(timer.epoch_s[skip:])
    timed = epochs - skip
    return {
        "model": best,
        "last_model": trainer.model,
        "epochs": epochs,
        "timed_epochs": timed,
        "warmup_excluded": bool(skip),
        "train_seconds": train_s,
        "eval_seconds": eval_s,
        "epoch_seconds": epoch_s,
        "total_train_call_seconds": total_s,
        "per_epoch_train_seconds": timer.train_s,
        "per_epoch_eval_seconds": timer.eval_s,
        "per_epoch_seconds": timer.epoch_s,
        "examples_per_s": n_train * timed / train_s,
        "epoch_examples_per_s": (n_train + n_val) * timed / epoch_s,
        "train_examples_per_s_incl_eval": n_train * timed / epoch_s,
        "train_examples_per_epoch": n_train,
        "eval_examples_per_epoch": n_val,
    }


@contextlib.contextmanager
def _quiet(enabled: bool):
    """Silence Pythae's console logger and tqdm progress bars (they write to stderr).

    The bars come from ``pythae.trainers.training_callbacks.tqdm`` (``tqdm.auto``),
    replaced here for the duration by a ``tqdm`` with ``disable=True``.
    """
    if not enabled:
        yield
        return
    import functools

    from pythae.trainers import training_callbacks

    names = ["pythae.trainers.base_trainer.base_trainer", "pythae.trainers.training_callbacks"]
    old_levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.WARNING)
    old_tqdm = training_callbacks.tqdm
    training_callbacks.tqdm = functools.partial(old_tqdm, disable=True)
    try:
        yield
    finally:
        training_callbacks.tqdm = old_tqdm
        for n, lvl in old_levels.items():
            logging.getLogger(n).setLevel(lvl)


def mean_elbo(model, x: np.ndarray, batch_size: int = 1000) -> float:
    """Mean negative ELBO (nats per image) of Pythae's training loss on ``x``, no grad."""
    import torch

    model.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = torch.from_numpy(x[i : i + batch_size])
            out = model({"data": xb})
            total += float(out.loss) * len(xb)
    return total / len(x)


# --------------------------------------------------------------------------- NLL


def pythae_nll(model, x: np.ndarray, *, n_samples: int, batch_size: int | None = None,
               no_grad: bool = False, seed: int = 0) -> dict:
    """Pythae's own importance-sampled NLL estimate (``model.get_nll``), timed.

    Returns {"nll": -mean log p(x) in nats, "nll_seconds", "nll_k" (samples actually
    drawn per image, see the module docstring), "nll_n"}.
    """
    import torch

    batch_size = n_samples if batch_size is None else batch_size
    k_used = batch_size * max(1, n_samples // batch_size)
    model.eval()
    data = torch.from_numpy(np.ascontiguousarray(x))
    torch.manual_seed(seed)
    ctx = torch.no_grad() if no_grad else contextlib.nullcontext()
    t0 = time.perf_counter()
    with ctx:
        log_p = model.get_nll(data, n_samples=n_samples, batch_size=batch_size)
    seconds = time.perf_counter() - t0
    return {"nll": -float(log_p), "nll_seconds": seconds, "nll_k": k_used, "nll_n": len(x),
            "nll_no_grad": no_grad, "nll_batch_size": batch_size}


# --------------------------------------------------------------------------- CLI


def run(args: argparse.Namespace) -> dict:
    """Everything the CLI does, returning the JSON-able result."""
    import torch
    import pythae  # noqa: F401
    from importlib.metadata import version

    torch.set_num_threads(args.threads)
    splits = load_mnist(args.mnist_dir)
    data = {name: binarize_fixed(x, args.seed) for name, x in splits.items()}
    test_seed = args.seed if args.test_seed is None else args.test_seed
    test = data["test"] if test_seed == args.seed else binarize_fixed(splits["test"], test_seed)

    model = build_model(args.seed)
    result: dict = {"library": "pythae", "torch": torch.__version__, "pythae": version("pythae"),
                    "numpy": np.__version__, "threads": torch.get_num_threads(), "seed": args.seed,
                    "batch_size": args.batch_size, "learning_rate": args.lr,
                    # 1-minute load average before the run: above ~0.5 on a 2-core machine,
                    # something else was competing for the CPU and the timings are suspect.
                    "loadavg_before": os.getloadavg()[0]}
    t = train(model, data, epochs=args.epochs, seed=args.seed, learning_rate=args.lr,
              batch_size=args.batch_size, quiet=args.quiet)
    best = t.pop("model")
    t.pop("last_model")
    result.update(t)
    result["val_neg_elbo"] = mean_elbo(best, data["val"])
    result["nll"] = result["nll_seconds"] = result["nll_k"] = result["nll_n"] = None
    if args.nll_samples > 0 and args.nll_limit != 0:
        limit = len(test) if args.nll_limit < 0 else min(args.nll_limit, len(test))
        x = test[:limit]
        result["test_neg_elbo"] = mean_elbo(best, x)
        result.update(pythae_nll(best, x, n_samples=args.nll_samples, batch_size=args.nll_batch_size,
                                 no_grad=args.nll_no_grad, seed=args.seed))
        result["test_binarization_seed"] = test_seed
    result["loadavg_after"] = os.getloadavg()[0]
    return result


def _print_table(r: dict) -> None:
    rows = [
        ("library", f"pythae {r['pythae']} / torch {r['torch']} ({r['threads']} threads)"),
        ("epochs (timed)", f"{r['epochs']} ({r['timed_epochs']}, first excluded: {r['warmup_excluded']})"),
        ("train examples/s", f"{r['examples_per_s']:,.0f}  ({r['train_seconds']:.2f} s for "
                              f"{r['timed_epochs'] * r['train_examples_per_epoch']:,} examples)"),
        ("epoch examples/s", f"{r['epoch_examples_per_s']:,.0f}  (train+eval, {r['epoch_seconds']:.2f} s)"),
        ("train ex/s incl. eval", f"{r['train_examples_per_s_incl_eval']:,.0f}"),
        ("val -ELBO (nats)", f"{r['val_neg_elbo']:.2f}"),
        ("load avg before/after", f"{r['loadavg_before']:.2f} / {r.get('loadavg_after', float('nan')):.2f}"),
    ]
    if r.get("nll") is not None:
        rows[-1:-1] = [
            ("test -ELBO (nats)", f"{r['test_neg_elbo']:.2f}"),
            ("test NLL (nats)", f"{r['nll']:.2f}  (K={r['nll_k']}, N={r['nll_n']}, "
                                f"{'no_grad' if r['nll_no_grad'] else 'as shipped'})"),
            ("NLL seconds", f"{r['nll_seconds']:.1f}  ({r['nll_n'] / r['nll_seconds']:.1f} images/s)"),
        ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=2, help="training epochs (default 2; epoch 1 is excluded from timing when >1)")
    p.add_argument("--seed", type=int, default=0, help="seeds binarization, parameters and training (default 0)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--batch-size", type=int, default=100, help="train and eval batch size (default 100)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--nll-samples", type=int, default=0, help="importance samples K for get_nll; 0 skips the NLL (default 0)")
    p.add_argument("--nll-limit", type=int, default=1000, help="first N test images for the NLL; -1 = all 10,000 (default 1000)")
    p.add_argument("--nll-batch-size", type=int, default=None,
                   help="get_nll batch_size (default: = --nll-samples, so exactly K samples are drawn)")
    p.add_argument("--nll-no-grad", action="store_true", help="wrap get_nll in torch.no_grad() (Pythae does not)")
    p.add_argument("--test-seed", type=int, default=None,
                   help="binarization seed of the test images (default: --seed, like vaekit's static binarization)")
    p.add_argument("--mnist-dir", default=str(DEFAULT_MNIST_DIR), help="folder with the four MNIST .gz IDX files")
    p.add_argument("--json", default=None, help="write the results here as JSON")
    p.add_argument("--quiet", action="store_true", help="silence Pythae's logger and progress bars")
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error("--epochs must be >= 1")
    if args.nll_batch_size is not None and args.nll_samples > args.nll_batch_size and args.nll_samples % args.nll_batch_size:
        p.error("--nll-samples must be a multiple of --nll-batch-size (get_nll drops the remainder)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    result = run(args)
    _print_table(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
