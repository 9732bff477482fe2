"""nixos-gitops: a Git-native GitOps controller for fleets of NixOS machines."""

__version__ = "0.1.0"
