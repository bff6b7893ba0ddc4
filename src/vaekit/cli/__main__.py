from vaekit.cli.parser import entry

entry()
