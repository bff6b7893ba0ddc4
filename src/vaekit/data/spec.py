"""What one example is: the data spec every split, run directory and model constructor carries.

A batch is a dict of per-example arrays that share their leading (batch) axis. The keys:

    "x"       the data: images (B, H, W, C) float in [0, 1], token ids (B, T) int32, or vectors (B, D)
    "y"       int32 (B,) class labels, when the data has them (a conditional model's condition)

Every key of a batch reaches the model: the trainer and the evaluators never pick keys out.
"""

from __future__ import annotations

import dataclasses
import math

from vaekit.errors import VaekitError

KINDS = ("images", "tokens", "vectors")


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """The shape and kind of one example's ``x``.

    kind: "images" (shape (H, W, C), values in [0, 1]), "tokens" (shape (T,), ids in
        [0, vocab_size)) or "vectors" (shape (D,), real values).
    shape: the event shape of one example.
    num_classes: ``max(y) + 1`` over the dataset, or None without labels.
    vocab_size: the vocabulary size of token data, else None.
    num_examples: the training split's size N (`Splits` sets it), for objectives that need the
        data set size (beta-TCVAE's stratified estimator); None where unknown.
    """

    kind: str
    shape: tuple[int, ...]
    num_classes: int | None = None
    vocab_size: int | None = None
    num_examples: int | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise VaekitError(f"data kind must be one of {', '.join(KINDS)}; got '{self.kind}'")
        expected = {"images": 3, "tokens": 1, "vectors": 1}[self.kind]
        if len(self.shape) != expected:
            raise VaekitError(f"{self.kind} data needs a {expected}-axis example shape, got {tuple(self.shape)}")
        if self.kind == "tokens" and not self.vocab_size:
            raise VaekitError("token data needs a vocab_size")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))

    @property
    def event_ndim(self) -> int:
        """Axes of one example's ``x``: a likelihood sums its log-density over these."""
        return len(self.shape)

    @property
    def size(self) -> int:
        """Numbers per example (pixels times channels, tokens, or vector entries)."""
        return math.prod(self.shape)

    @property
    def is_images(self) -> bool:
        return self.kind == "images"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "shape": list(self.shape), "num_classes": self.num_classes,
                "vocab_size": self.vocab_size, "num_examples": self.num_examples}

    @classmethod
    def from_dict(cls, doc: dict) -> "DataSpec":
        return cls(doc["kind"], tuple(doc["shape"]), doc.get("num_classes"), doc.get("vocab_size"),
                   doc.get("num_examples"))

    @classmethod
    def from_run_info(cls, info: dict) -> "DataSpec":
        """The spec in a run.json; runs written before specs existed recorded ``image_shape``."""
        if "data_spec" in info:
            return cls.from_dict(info["data_spec"])
        if "image_shape" in info:
            return cls("images", tuple(info["image_shape"]), info.get("num_classes"))
        raise VaekitError("run.json has neither data_spec nor image_shape; the run cannot be rebuilt")


__all__ = ["DataSpec", "KINDS"]
