"""The host agent: fetch → verify → build → activate → check health → report."""
