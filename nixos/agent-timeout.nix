# How long one run of gitops-agent.service may take (its TimeoutStartSec), in seconds.
#
# Longer than the longest cycle the agent's own time limits allow, so that the agent
# stops a stuck build or switch itself (and reports it), and systemd steps in only if the
# agent is stuck somewhere else. The argument is the rendered configuration file (what
# the agent reads, `settings` included), so the two cannot disagree. Builtins only:
# tests/test_nixos_module.py evaluates it with nix-instantiate.
config:
let
  units = {
    "" = 1;
    s = 1;
    m = 60;
    h = 3600;
    d = 86400;
    w = 604800;
  };
  # 300, "90s", "5m", "2h": as the agent reads durations.
  seconds =
    value:
    if builtins.isInt value then
      value
    else
      let
        parts = builtins.match " *0*([0-9]+) *([smhdw]?) *" value;
      in
      if parts == null then
        throw "services.gitops-agent: ${value} is not a duration (e.g. 30s, 5m, 2h)"
      else
        builtins.fromJSON (builtins.elemAt parts 0) * units.${builtins.elemAt parts 1};
  health = config.health or { };
  # Fetching, reporting (each git call is limited to 10 minutes) and reading facts.
  margin = 1800;
in
seconds config.build_timeout
# the switch, and going back if it fails
+ 2 * seconds config.activation_timeout
+ seconds (health.grace or 0)
# an unreachable remote is retried after the switch, and again after going back
+ 2 * seconds (health.remote_grace or 0)
+ seconds (health.timeout or 0) * builtins.length (health.commands or [ ])
+ margin
