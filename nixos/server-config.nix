# Renders `services.gitops-server` into the server's settings file, server.yaml.
#
# JSON is valid YAML, and `gitops server` reads server.yaml with yaml.safe_load, so this
# is exactly what gitops.server.config.ServerConfig.parse sees. Builtins only (no
# nixpkgs): tests/test_nixos_server.py evaluates it with nix-instantiate and parses the
# result with the server's own parser.
#
# `cfg` is the module's config plus `command`, the gitops program sshd's forced commands
# and git's hooks run (the module passes "${cfg.package}/bin/gitops").
{ cfg }:
let
  withoutNulls =
    attrs: builtins.removeAttrs attrs (builtins.filter (name: attrs.${name} == null) (builtins.attrNames attrs));
in
builtins.toJSON (withoutNulls {
  command = [ cfg.command ];
  main = if cfg.mirror then "mirror" else "signed";
  upstream = if cfg.mirror then cfg.repository else null;
  admins = map (principal: {
    inherit principal;
    key = cfg.admins.${principal};
  }) (builtins.attrNames cfg.admins);
  max_pushes = cfg.maxPushes;
  push_queue = cfg.pushQueue;
})
