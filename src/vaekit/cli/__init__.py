"""The `vaekit` command line: `vaekit.cli.parser` builds it and runs a command (`main`, `entry`);
one module per group of commands registers its own."""

from vaekit.cli.parser import entry, main

__all__ = ["entry", "main"]
