"""Image-folder throughput: is the data loader or the training step the bottleneck of `folder-conv64`?

    .venv/bin/python benchmarks/folder_throughput.py [--images 3000] [--source-size 128] [--steps 20]

Writes --images JPEG files (--source-size square, RGB, smooth random colour fields, quality 90) to a
temporary folder, then measures on this machine:

* the loader alone: `FolderStream.batches` (Grain, reader threads decoding with Pillow and resizing
  to 64x64) for --steps batches of 64, images/s;
* `folder-conv64` training with the images already in memory (`data.stream=no`): images/s of the
  second epoch (`Trainer.fit_epoch`; the first compiles);
* the same fed by the stream (`data.stream=yes`): training images/s end to end.

The loader and the step share the same cores, so "stream" is below both alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_busy, cpu_info  # noqa: E402


def write_folder(root: Path, n: int, size: int, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        low = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)  # upsampled: photo-like, compressible
        Image.fromarray(low).resize((size, size), Image.BICUBIC).save(root / f"{i:06d}.jpg", quality=90)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=3000)
    p.add_argument("--source-size", type=int, default=128, help="side of the JPEG files (resized to 64 when read)")
    p.add_argument("--steps", type=int, default=20, help="batches of 64 timed from the loader alone")
    p.add_argument("--json")
    args = p.parse_args()

    import vaekit
    from vaekit.data import load_configured

    info = cpu_info()
    print(f"CPU: {info['model']}, {info['cores']} cores (others busy {cpu_busy():.0%} before the run)", flush=True)
    root = Path(tempfile.mkdtemp(prefix="vaekit-folder-")) / "images"
    t0 = time.perf_counter()
    write_folder(root, args.images, args.source_size)
    print(f"wrote {args.images:,} {args.source_size}x{args.source_size} JPEGs in {time.perf_counter() - t0:.1f} s", flush=True)

    out: dict = {"date": time.strftime("%Y-%m-%d"), "cpu": info, "images": args.images,
                 "source_size": args.source_size, "batch": 64}
    cfg = vaekit.resolve("folder-conv64", None, [f"data.path={root}", "data.stream=yes"])
    splits = load_configured(cfg.data)
    stream = splits.stream
    rows = np.random.default_rng(0).integers(0, stream.num_examples, size=(args.steps + 2, 64))
    it = stream.batches(rows)
    next(it), next(it)  # threads started, prefetch filled
    t0 = time.perf_counter()
    for _ in range(args.steps):
        next(it)
    out["loader_images_per_s"] = args.steps * 64 / (time.perf_counter() - t0)
    print(f"loader alone (Grain, decode + resize to 64x64): {out['loader_images_per_s']:,.0f} images/s", flush=True)

    from vaekit.training.loop import Trainer

    for mode in ("no", "yes"):
        cfg = vaekit.resolve("folder-conv64", None, [f"data.path={root}", f"data.stream={mode}"])
        trainer = Trainer(cfg, load_configured(cfg.data))
        trainer.fit_epoch()  # compiles
        rate = trainer.fit_epoch()["train/examples_per_s"]
        key = "step_resident_images_per_s" if mode == "no" else "step_streamed_images_per_s"
        out[key] = rate
        what = "training, images in memory" if mode == "no" else "training fed by the stream"
        print(f"{what}: {rate:,.0f} images/s ({64e3 / rate:.0f} ms/step; one epoch of "
              f"{trainer.epoch_steps} steps after a compiling one)", flush=True)
    bottleneck = "the loader" if out["loader_images_per_s"] < out["step_resident_images_per_s"] else "the step"
    print(f"\nbottleneck on this machine: {bottleneck}")
    out["bottleneck"] = bottleneck
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
