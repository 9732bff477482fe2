"""The fleet source on ``main``: the model of fleet.yaml and host.yaml, their schema,
reading files from a directory or a commit, compliance policies, and ``gitops check``."""
