"""``gitops demo``: a whole fleet on one machine, with stand-in Nix systems."""
