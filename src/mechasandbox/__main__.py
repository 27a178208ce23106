"""`python -m mechasandbox`."""

from mechasandbox.cli.main import entry_point

entry_point()
