from vaekit.cli.main import entry

entry()
