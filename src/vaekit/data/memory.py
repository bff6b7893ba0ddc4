"""Host arrays that JAX's CPU device can use without a copy.

On the CPU backend `jax.device_put` aliases a numpy array instead of copying it when its data
is 64-byte aligned. numpy's allocator gives 16-byte alignment, so the trainer's upload of the
training set (`Trainer.train_data`) copied it: 157 MB and 0.13 s for MNIST's 50,000 images, plus
the first touch of as many fresh pages. The loaders that create their arrays (MNIST's pixels,
binarized splits) allocate them here, and mark them read-only once filled: the trainer aliases
only read-only arrays, so a caller's array that may still change is always copied.
"""

from __future__ import annotations

import numpy as np

ALIGNMENT = 64  # bytes; what XLA's CPU client needs to alias a host buffer


def empty_aligned(shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialized C-contiguous array of `shape` whose data starts on an ALIGNMENT boundary."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def frozen(x: np.ndarray) -> np.ndarray:
    """`x`, marked read-only (in place), for arrays the library created and nothing else holds."""
    x.flags.writeable = False
    return x
