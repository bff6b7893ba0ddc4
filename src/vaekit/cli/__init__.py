"""The `vaekit` command line (`vaekit.cli.main`)."""

from vaekit.cli.main import entry, main

__all__ = ["entry", "main"]
