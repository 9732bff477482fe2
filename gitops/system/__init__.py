"""The only code that touches the operating system: subprocesses, Nix, git transport,
atomic file writes."""
