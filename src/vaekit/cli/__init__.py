"""The `vaekit` command line (`vaekit.cli.main`)."""

from vaekit.cli.main import build_parser, entry, main

__all__ = ["build_parser", "entry", "main"]
