"""Pure policy helpers: size and duration parsing shared by config files and the CLI."""
