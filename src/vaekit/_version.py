"""vaekit's version, as the installed distribution records it (`vaekit --version`, run.json, reports)."""

from __future__ import annotations


def version() -> str:
    """The installed vaekit's version; "unknown" for a source tree that was never installed."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as distribution_version

    try:
        return distribution_version("vaekit")
    except PackageNotFoundError:
        return "unknown"
