"""The command-line interface (contract: CLI.md)."""
