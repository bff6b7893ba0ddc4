"""Peer benchmark: a plain PyTorch training loop, written the way a user would without a library.

Runs in the benchmark venv ``.venv-bench`` (see ``benchmarks/README.md``) and imports nothing from
vaekit; vaekit's scripts run it as a subprocess (``benchmarks/common.py:run_peer(...,
script=TORCH_PEER)``) and read its JSON. Eager mode, ``torch.optim.Adam``, NCHW tensors (torch's
default layout), ``torch.set_num_threads`` = the cores this process may use, ``loss.item()`` every
step (what a user logs), no ``torch.compile``. Two models, the same nets as vaekit's presets:

``--model mlp`` (vaekit's ``mnist-mlp``)
    encoder 784-200-200-100 tanh (the last layer split into the posterior mean and the raw scale),
    decoder 50-200-200-784 tanh giving Bernoulli logits; posterior std = softplus(raw) + 1e-4 as
    vaekit's default; loss = mean over the batch of (BCE-with-logits summed over pixels + closed-form
    KL), one reparameterised draw. Batch 100, Adam 1e-3, **dynamic binarization** (a fresh
    ``torch.bernoulli`` of every batch, as the preset does). MNIST: the first 50,000 training images
    (read from ``src/vaekit/data/mnist/``), shuffled each epoch; after each epoch's training pass a
    validation pass over the last 10,000 under ``torch.no_grad()`` (statically binarized once), as
    ``benchmarks/throughput.py`` times vaekit. Epoch 1 is excluded from the timing when more than
    one epoch runs. Reports ``examples_per_s`` (training examples / training seconds) and
    ``epoch_examples_per_s`` (60,000 / epoch seconds).

``--model conv`` (vaekit's ``shapes-beta``)
    64x64x1 input; encoder: four Conv2d(4x4, stride 2, padding 1) + BatchNorm2d + ReLU with
    channels 32-32-64-64, flatten (64 x 4 x 4), Linear 1024-256 + ReLU, Linear 256-20 (mean, raw
    scale); decoder: Linear 10-256 + ReLU, Linear 256-1024 + ReLU, reshape to 64 x 4 x 4, three
    ConvTranspose2d(4x4, stride 2, padding 1) + BatchNorm2d + ReLU with channels 64-32-32, and a
    last ConvTranspose2d to 1 channel (Bernoulli logits). ``padding=1`` is what "SAME" is for a
    4x4 stride-2 window on even sides, so every shape matches vaekit's ``nnx.Conv`` /
    ``nnx.ConvTranspose`` layers; BatchNorm momentum 0.1 (= nnx's 0.9), eps 1e-5, batch
    statistics in training. Loss = recon + beta * KL with beta 4, Adam 1e-4, batch 64. Data: a
    resident tensor of binary 64x64 images of squares and ellipses at random sizes and places
    (dSprites-like; their content does not change the time of a step), batches drawn uniformly
    with replacement as ``shapes-beta`` does. Reports steady-state ``seconds_per_step``: after
    ``--warmup`` steps, ``--repeats`` blocks of ``--steps`` steps are timed; the median block.

CLI::

    .venv-bench/bin/python benchmarks/peers/torch_plain.py --model mlp --epochs 2 --json out.json
    .venv-bench/bin/python benchmarks/peers/torch_plain.py --model conv --steps 20 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pythae_mnist import DEFAULT_MNIST_DIR, binarize_fixed, load_mnist  # noqa: E402  (no torch at import)


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# --------------------------------------------------------------------------- models


def build_mlp(latent_dim: int = 50, hidden=(200, 200), pixels: int = 784):
    import torch
    from torch import nn
    import torch.nn.functional as F

    class MLPVAE(nn.Module):
        def __init__(self):
            super().__init__()
            sizes = (pixels, *hidden)
            enc: list = []
            for a, b in zip(sizes[:-1], sizes[1:]):
                enc += [nn.Linear(a, b), nn.Tanh()]
            self.encoder = nn.Sequential(*enc, nn.Linear(sizes[-1], 2 * latent_dim))
            dsizes = (latent_dim, *reversed(hidden))
            dec: list = []
            for a, b in zip(dsizes[:-1], dsizes[1:]):
                dec += [nn.Linear(a, b), nn.Tanh()]
            self.decoder = nn.Sequential(*dec, nn.Linear(dsizes[-1], pixels))

        def loss(self, x, beta: float = 1.0):
            x = x.reshape(x.shape[0], -1)
            mean, raw = self.encoder(x).chunk(2, dim=-1)
            std = F.softplus(raw) + 1e-4
            z = mean + std * torch.randn_like(std)
            logits = self.decoder(z)
            recon = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
            kl = 0.5 * (mean**2 + std**2 - 1.0).sum(-1) - torch.log(std).sum(-1)
            return (recon + beta * kl).mean(), (recon + kl).mean()

    return MLPVAE()


def build_conv(latent_dim: int = 10, channels=(32, 32, 64, 64), dense: int = 256, side: int = 64):
    import torch
    from torch import nn
    import torch.nn.functional as F

    top = channels[-1]
    s0 = side // 2 ** len(channels)

    class ConvVAE(nn.Module):
        def __init__(self):
            super().__init__()
            enc: list = []
            c_in = 1
            for c in channels:
                enc += [nn.Conv2d(c_in, c, 4, stride=2, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
                c_in = c
            self.encoder = nn.Sequential(*enc, nn.Flatten(), nn.Linear(top * s0 * s0, dense), nn.ReLU(),
                                         nn.Linear(dense, 2 * latent_dim))
            self.project = nn.Sequential(nn.Linear(latent_dim, dense), nn.ReLU(), nn.Linear(dense, top * s0 * s0),
                                         nn.ReLU())
            outs = (*reversed(channels[:-1]), 1)
            dec: list = []
            for i, (a, b) in enumerate(zip(reversed(channels), outs)):
                dec.append(nn.ConvTranspose2d(a, b, 4, stride=2, padding=1))
                if i < len(outs) - 1:
                    dec += [nn.BatchNorm2d(b), nn.ReLU()]
            self.decoder = nn.Sequential(*dec)

        def loss(self, x, beta: float = 1.0):
            mean, raw = self.encoder(x).chunk(2, dim=-1)
            std = F.softplus(raw) + 1e-4
            z = mean + std * torch.randn_like(std)
            logits = self.decoder(self.project(z).reshape(-1, top, s0, s0))
            recon = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(-1)
            kl = 0.5 * (mean**2 + std**2 - 1.0).sum(-1) - torch.log(std).sum(-1)
            return (recon + beta * kl).mean(), (recon + kl).mean()

    return ConvVAE()


def shapes_images(n: int, side: int = 64, seed: int = 0) -> np.ndarray:
    """(n, 1, side, side) float32 binary images: a filled square or ellipse at a random place and size."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side].astype(np.float32)
    out = np.zeros((n, 1, side, side), np.float32)
    for i in range(n):
        r = rng.uniform(4, 12)
        cy, cx = rng.uniform(r, side - r, size=2)
        if rng.random() < 0.5:
            m = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
        else:
            m = ((yy - cy) / r) ** 2 + ((xx - cx) / (0.6 * r)) ** 2 <= 1.0
        out[i, 0] = m
    return out


# --------------------------------------------------------------------------- loops


def train_mlp(args) -> dict:
    import torch

    torch.manual_seed(args.seed)
    splits = load_mnist(args.mnist_dir)
    x_train = torch.from_numpy(splits["train"].reshape(len(splits["train"]), -1))
    x_val = torch.from_numpy(binarize_fixed(splits["val"], args.seed).reshape(len(splits["val"]), -1))
    model = build_mlp()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr or 1e-3)
    b = args.batch_size or 100
    steps = len(x_train) // b
    train_s, val_s, val_elbo = [], [], None
    for epoch in range(args.epochs):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(len(x_train))
        total = 0.0
        for i in range(steps):
            xb = torch.bernoulli(x_train[perm[i * b : (i + 1) * b]])
            loss, _ = model.loss(xb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        t1 = time.perf_counter()
        model.eval()
        with torch.no_grad():
            elbo = sum(float(model.loss(x_val[i : i + b])[1]) * len(x_val[i : i + b]) for i in range(0, len(x_val), b))
        t2 = time.perf_counter()
        train_s.append(t1 - t0)
        val_s.append(t2 - t1)
        val_elbo = -elbo / len(x_val)
    skip = 1 if args.epochs > 1 else 0
    tr, va = statistics.mean(train_s[skip:]), statistics.mean(val_s[skip:])
    n = steps * b
    return {
        "model": "mlp",
        "examples_per_s": n / tr,
        "epoch_examples_per_s": (n + len(x_val)) / (tr + va),
        "train_seconds": tr,
        "val_seconds": va,
        "per_epoch_train_seconds": train_s,
        "per_epoch_val_seconds": val_s,
        "warmup_excluded": bool(skip),
        "val_neg_elbo": -val_elbo,
        "epochs": args.epochs,
        "batch_size": b,
    }


def train_conv(args) -> dict:
    import torch

    torch.manual_seed(args.seed)
    data = torch.from_numpy(shapes_images(args.images, seed=args.seed))
    model = build_conv()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr or 1e-4)
    b = args.batch_size or 64
    model.train()

    def step():
        xb = data[torch.randint(0, len(data), (b,))]
        loss, elbo = model.loss(xb, beta=args.beta)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(args.warmup):
        step()
    blocks = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for _ in range(args.steps):
            last = step()
        blocks.append((time.perf_counter() - t0) / args.steps)
    return {
        "model": "conv",
        "seconds_per_step": statistics.median(blocks),
        "block_seconds_per_step": blocks,
        "steps_per_block": args.steps,
        "warmup_steps": args.warmup,
        "batch_size": b,
        "beta": args.beta,
        "last_loss": last,
        "examples_per_s": b / statistics.median(blocks),
    }


def run(args) -> dict:
    import torch

    torch.set_num_threads(args.threads or cores())
    result = {"library": "torch (plain loop)", "torch": torch.__version__, "threads": torch.get_num_threads(),
              "mkldnn": torch.backends.mkldnn.is_available(), "seed": args.seed,
              "loadavg_before": os.getloadavg()[0]}
    result.update(train_mlp(args) if args.model == "mlp" else train_conv(args))
    result["loadavg_after"] = os.getloadavg()[0]
    return result


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("mlp", "conv"), default="mlp")
    p.add_argument("--epochs", type=int, default=2, help="mlp: epochs, the first excluded when > 1 (default 2)")
    p.add_argument("--steps", type=int, default=20, help="conv: steps per timed block (default 20)")
    p.add_argument("--repeats", type=int, default=5, help="conv: timed blocks; the median is reported (default 5)")
    p.add_argument("--warmup", type=int, default=5, help="conv: untimed steps first (default 5)")
    p.add_argument("--images", type=int, default=4096, help="conv: resident training images (default 4096)")
    p.add_argument("--beta", type=float, default=4.0, help="conv: KL weight (default 4)")
    p.add_argument("--batch-size", type=int, default=None, help="default 100 (mlp) / 64 (conv)")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate, default 1e-3 (mlp) / 1e-4 (conv)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: the usable cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mnist-dir", default=str(DEFAULT_MNIST_DIR))
    p.add_argument("--json", default=None, help="write the results here as JSON")
    p.add_argument("--quiet", action="store_true", help="print nothing (run_peer passes it; nothing else to silence)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    r = run(args)
    if not args.quiet:
        if r["model"] == "mlp":
            print(f"plain torch {r['torch']} ({r['threads']} threads), mnist-mlp: {r['examples_per_s']:,.0f} train "
                  f"examples/s, {r['epoch_examples_per_s']:,.0f} incl. validation, val -ELBO {r['val_neg_elbo']:.2f}")
        else:
            print(f"plain torch {r['torch']} ({r['threads']} threads), shapes-beta conv step: "
                  f"{r['seconds_per_step'] * 1e3:.1f} ms (blocks: "
                  + ", ".join(f"{s * 1e3:.1f}" for s in r["block_seconds_per_step"]) + ")")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
