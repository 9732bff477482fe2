"""One module per command: each takes explicit arguments and returns an exit code."""
