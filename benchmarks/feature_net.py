"""Train vaekit's shipped MNIST feature net from a seed and record its test accuracy.

    python benchmarks/feature_net.py [--epochs 6] [--seed 0] [--out src/vaekit/nets/mnist_lenet.npz]
    python benchmarks/feature_net.py --floor     # the quality metrics' floor: training vs test images
    python benchmarks/feature_net.py --data shapes --epochs 4    # the shapes net (shapes_lenet.npz)

A LeNet-sized classifier (`vaekit.nets.features.FeatureNet`: conv 5x5 16, pool, conv 5x5 32,
pool, dense 128, a 10-way head) trained by Adam (learning rate 1e-3, cosine-decayed to 0) on vaekit's MNIST training split (the first 50,000
training images), validated on the other 10,000, tested on the 10,000 t10k images. Writes the
.npz and its sidecar .json (SHA-256, accuracies, seed, epochs, seconds) and prints a table; the
digest goes into `vaekit.nets.features.SHIPPED`.
"""

from __future__ import annotations

import argparse
import platform
import time

from flax import nnx

from vaekit.data import load_data
from vaekit.evaluate import features


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--out", default="src/vaekit/nets/mnist_lenet.npz")
    p.add_argument("--floor", action="store_true",
                   help="only measure the metrics' floor with the shipped net: FID, precision and recall of "
                        "10,000 training images (the first) against the 10,000 test images")
    p.add_argument("--data", choices=("mnist", "shapes"), default="mnist",
                   help="shapes: a five-head classifier of the generated shapes' factors (shape, scale, "
                        "orientation, pos_x, pos_y) on --shapes-train rendered images")
    p.add_argument("--shapes-train", type=int, default=40_000)
    args = p.parse_args()
    if args.data == "shapes":
        return shapes(args)
    splits = load_data("mnist")
    if args.floor:
        return floor(splits)
    net = features.FeatureNet((28, 28, 1), rngs=nnx.Rngs(params=args.seed))
    t0 = time.perf_counter()
    features.train_classifier(net, splits.train["x"], [splits.train["y"]], epochs=args.epochs,
                              batch_size=args.batch_size, seed=args.seed,
                              log=lambda e, s, l: print(f"epoch {e}: {s:.1f} s, loss {l:.4f}", flush=True))
    seconds = time.perf_counter() - t0
    val = features.accuracy(net, splits.val["x"], [splits.val["y"]])[0]
    test = features.accuracy(net, splits.test["x"], [splits.test["y"]])[0]
    meta = {"data": "mnist", "train_examples": splits.num_train, "epochs": args.epochs, "seed": args.seed,
            "batch_size": args.batch_size, "val_accuracy": val, "test_accuracy": test,
            "train_seconds": round(seconds, 1), "machine": f"{platform.machine()} {platform.processor()}".strip(),
            "date": time.strftime("%Y-%m-%d")}
    digest = features.save(args.out, net, meta)
    print(f"| data | epochs | seed | val acc. | test acc. | train s |\n|---|---|---|---|---|---|\n"
          f"| mnist | {args.epochs} | {args.seed} | {val:.4f} | {test:.4f} | {seconds:.0f} |")
    print(f"sha256 {digest}\n{args.out}")


def shapes(args) -> None:
    """The shapes net: one head per factor, trained on rendered images of a seeded grid subset."""
    from vaekit.data.shapes import FACTOR_NAMES, FACTOR_SIZES, load_shapes_splits

    out = args.out.replace("mnist_lenet", "shapes_lenet")
    train, val, test = load_shapes_splits(limit=args.shapes_train, seed=args.seed)
    net = features.FeatureNet((64, 64, 1), heads=FACTOR_SIZES, rngs=nnx.Rngs(params=args.seed))
    t0 = time.perf_counter()
    labels = lambda split: [split["factors"][:, j] for j in range(len(FACTOR_SIZES))]  # noqa: E731
    features.train_classifier(net, train["x"], labels(train), epochs=args.epochs, batch_size=args.batch_size,
                              seed=args.seed, log=lambda e, s, l: print(f"epoch {e}: {s:.1f} s, loss {l:.4f}", flush=True))
    seconds = time.perf_counter() - t0
    acc = dict(zip(FACTOR_NAMES, features.accuracy(net, test["x"], labels(test))))
    meta = {"data": "shapes", "train_examples": len(train["x"]), "epochs": args.epochs, "seed": args.seed,
            "batch_size": args.batch_size, "test_accuracy": acc, "train_seconds": round(seconds, 1),
            "date": time.strftime("%Y-%m-%d")}
    digest = features.save(out, net, meta)
    print("| factor | test acc. |\n|---|---|\n" + "\n".join(f"| {k} | {v:.4f} |" for k, v in acc.items()))
    print(f"{seconds:.0f} s; sha256 {digest}\n{out}")


def floor(splits) -> None:
    """What real data scores against real data: the best a model's samples can hope for."""
    from vaekit.evaluate import quality

    net = features.load_shipped("mnist")
    t0 = time.perf_counter()
    r = quality.compare(net, splits.test["x"], splits.train["x"][:10_000])
    seconds = time.perf_counter() - t0
    acc = features.accuracy(net, splits.train["x"][:10_000], [splits.train["y"][:10_000]])[0]
    print("| compared | FID | precision | recall | label acc. | s |\n|---|---|---|---|---|---|\n"
          f"| train[:10000] vs test | {r['fid']:.3f} | {r['precision']:.4f} | {r['recall']:.4f} | {acc:.4f} | "
          f"{seconds:.1f} |")


if __name__ == "__main__":
    main()
