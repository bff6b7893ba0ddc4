"""Files vaekit writes: every one atomically (a temporary file renamed into place), so an
interruption or an error never leaves a half-written picture, record or export; and every output
path a user names is checked before any work starts."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from vaekit.errors import VaekitError


def atomic_write(path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it into place.

    On any error (or an interrupt) the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    # The process id keeps concurrent writers apart; a plain name (not mkstemp) keeps the
    # file's permissions the umask's, as for any other file a run writes.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def check_out(out: str | Path, allowed: tuple[str, ...]) -> Path:
    """An output path with an allowed suffix in an existing directory; one line otherwise."""
    path = Path(out)
    if path.suffix.lower() not in allowed:
        raise VaekitError(f"--out must end in {' or '.join(allowed)}, got '{out}'")
    if not path.parent.exists():
        raise VaekitError(f"directory '{path.parent}' for --out does not exist")
    if path.is_dir():
        raise VaekitError(f"--out '{out}' is a directory")
    return path


__all__ = ["atomic_write", "check_out", "write_text_atomic"]
