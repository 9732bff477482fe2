# The first-boot enrolment unit of `services.gitops-agent.enrol` (nixos/agent.nix):
# `gitops enroll` proposes this machine on enroll/<name> (docs/enroll-host.md), then a
# marker in the agent's state directory keeps the unit from running again.
#
# Builtins only (no nixpkgs), so tests/test_nixos_module.py evaluates it with
# nix-instantiate and runs the script it returns against a real repository.
#
# `cfg` is the module's config (services.gitops-agent); `gitops` the package's path;
# `coreutils` a directory with bin/mkdir and bin/touch; `knownHostsFile` the enrolment
# remote's host keys as a file, or null.
{
  cfg,
  gitops,
  coreutils,
  knownHostsFile ? null,
}:
let
  enrol = cfg.enrol;
  marker = "${cfg.stateDir}/enrolled";
  quote = arg: "'" + builtins.replaceStrings [ "'" ] [ "'\\''" ] (toString arg) + "'";
  optional = flag: value: if value == null || value == "" then [ ] else [ flag value ];
  args = [
    "${gitops}/bin/gitops"
    "enroll"
    "--remote"
    enrol.remote
    "--name"
    enrol.name
    "--key"
    cfg.signingKey
  ]
  ++ builtins.concatMap (profile: [ "--profile" profile ]) enrol.profiles
  ++ optional "--owner" enrol.owner
  ++ optional "--ssh-key" enrol.sshKey
  ++ optional "--known-hosts" knownHostsFile;
in
{
  inherit marker;

  script = ''
    set -eu
    ${builtins.concatStringsSep " " (map quote args)}
    ${coreutils}/bin/mkdir -p ${quote cfg.stateDir}
    ${coreutils}/bin/touch ${quote marker}
  '';

  unit = {
    description = "nixos-gitops: propose this machine to the fleet (enroll/${enrol.name}), once";
    wantedBy = [ "multi-user.target" ];
    wants = [ "network-online.target" ];
    # The host key signs the proposal: sshd makes it on its first start.
    after = [
      "network-online.target"
      "sshd-keygen.service"
      "sshd.service"
    ];
    before = [ "gitops-agent.service" ];
    unitConfig = {
      ConditionPathExists = "!${marker}";
      # A network that is not up yet: tried again every 2 minutes, 5 times; then at the
      # next boot. A refusal (the name exists, the key is another host's) is in the journal.
      StartLimitIntervalSec = 1200;
      StartLimitBurst = 5;
    };
    environment.HOME = cfg.stateDir;
    serviceConfig = {
      Type = "oneshot";
      Restart = "on-failure";
      RestartSec = 120;
      UMask = "0077";
    };
  };
}
