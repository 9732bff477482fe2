# What the modules (agent.nix, server.nix, site.nix) share: option types and options,
# the systemd sandbox of their services, and how they reach a git repository over ssh.
# Plain Nix apart from the `lib` functions it is given, so the tests can evaluate it
# with a stand-in lib: import ./lib.nix { inherit lib; }.
{ lib }:
let
  inherit (lib) mkOption types;
in
{
  # An absolute path as a string. For secrets this matters: a Nix path would copy the
  # file into the world-readable store, a string is only read at run time.
  pathString = types.strMatching "/.*";

  # The `package` option; `provides` says what the service uses of it.
  packageOption =
    { config, pkgs }:
    provides:
    mkOption {
      type = types.package;
      default = pkgs.callPackage ./package.nix { nix = config.nix.package; };
      defaultText = lib.literalExpression "pkgs.callPackage ./package.nix { nix = config.nix.package; }";
      description = "The nixos-gitops package (it provides ${provides}).";
    };

  # A `knownHosts` option: host keys in ssh-keyscan's format, unset by default.
  knownHostsOption =
    { example, description }:
    mkOption {
      type = types.nullOr types.lines;
      default = null;
      inherit example description;
    };

  # A service that needs no capability, no devices and no writable file system but
  # what its unit allows: the server's and the site's, and the agent's trigger.
  sandbox = {
    CapabilityBoundingSet = "";
    NoNewPrivileges = true;
    PrivateTmp = true;
    PrivateDevices = true;
    ProtectSystem = "strict";
    ProtectHome = true;
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectClock = true;
    ProtectHostname = true;
    RestrictAddressFamilies = [
      "AF_UNIX"
      "AF_INET"
      "AF_INET6"
    ];
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    LockPersonality = true;
    SystemCallArchitectures = "native";
    SystemCallFilter = [ "@system-service" ];
  };

  # Whether git reaches `url` over ssh (ssh://... or scp-like user@host:path).
  isSshUrl =
    url:
    lib.hasPrefix "ssh://" url
    || (builtins.match "[^/]*@[^/]*:.*" url != null && !(lib.hasInfix "://" url));

  # GIT_SSH_COMMAND: never prompt; the given key only; with known hosts, check strictly.
  sshCommand =
    { sshKey, knownHostsFile }:
    lib.concatStringsSep " " (
      [
        "ssh"
        "-o BatchMode=yes"
        "-o IdentitiesOnly=yes"
      ]
      ++ lib.optionals (sshKey != null) [ "-i ${lib.escapeShellArg sshKey}" ]
      ++ lib.optionals (knownHostsFile != null) [
        "-o StrictHostKeyChecking=yes"
        "-o UserKnownHostsFile=${knownHostsFile}"
      ]
    );
}
