# The hosts of a fleet tree: each directory under hosts/ that has a configuration.nix.
#
# builtins only, so tests evaluate it with nix-instantiate. A deploy tree holds only
# hosts/<thathost>/, so the same flake.nix defines exactly that one host there.
hostsDir:
let
  entries = if builtins.pathExists hostsDir then builtins.readDir hostsDir else { };
  isHost =
    name: entries.${name} == "directory" && builtins.pathExists (hostsDir + "/${name}/configuration.nix");
in
builtins.filter isHost (builtins.attrNames entries)
