# services.gitops-agent: pull this host's signed deploy branch, build it, switch to it,
# check health, and push a signed status report.
#
# The option defaults live in ./agent-defaults.json, which tests compare with the
# agent's own defaults; ./agent-config.nix renders the options into the agent's
# configuration file. Nothing secret enters the Nix store: secrets are paths (strings).
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.gitops-agent;
  defaults = lib.importJSON ./agent-defaults.json;
  inherit (lib) mkOption types;
  shared = import ./lib.nix { inherit lib; };
  # Secrets are these strings, never Nix paths, which would be copied to the store.
  inherit (shared) pathString;

  trustedPublishersFile =
    if cfg.trustedPublishersFile != null then
      cfg.trustedPublishersFile
    else
      pkgs.writeText "gitops-trusted-publishers" cfg.trustedPublishers;

  trustedCommandersFile =
    if cfg.trustedCommandersFile != null then
      cfg.trustedCommandersFile
    else if cfg.trustedCommanders != null then
      pkgs.writeText "gitops-trusted-commanders" cfg.trustedCommanders
    else
      null;

  knownHostsFile =
    if cfg.knownHostsFile != null then
      cfg.knownHostsFile
    else if cfg.knownHosts != null then
      pkgs.writeText "gitops-known-hosts" cfg.knownHosts
    else
      null;

  enrolUnit = import ./agent-enrol.nix {
    inherit cfg;
    gitops = cfg.package;
    coreutils = pkgs.coreutils;
    knownHostsFile =
      if cfg.enrol.knownHosts != null then
        pkgs.writeText "gitops-enrol-known-hosts" cfg.enrol.knownHosts
      else
        null;
  };

  configText = import ./agent-config.nix {
    cfg = cfg // {
      inherit trustedPublishersFile trustedCommandersFile knownHostsFile;
    };
  };
  configFile = pkgs.writeText "gitops-agent.yaml" configText;

  # Longer than the agent's own time limits allow a cycle to take (see the file). Only
  # numbers are read, so the store paths' context may go.
  timeoutStartSec = import ./agent-timeout.nix (
    builtins.fromJSON (builtins.unsafeDiscardStringContext configText)
  );

  # `--config` belongs to the `agent` command: gitops agent --config FILE once|trigger.
  agentCommand = "${cfg.package}/bin/gitops agent --config ${configFile}";

  isSshRemote = shared.isSshUrl cfg.remote;
in
{
  options.services.gitops-agent = {
    enable = lib.mkEnableOption "the nixos-gitops agent, which applies this host's signed deploy branch";

    package = shared.packageOption { inherit config pkgs; } "the `gitops` command";

    remote = mkOption {
      type = types.str;
      example = "ssh://git@git.example.org/infra/fleet.git";
      description = ''
        URL of the fleet repository. The agent fetches only `deploy/<hostName>` and
        pushes its reports to `reports/<hostName>`. An ssh remote needs `knownHosts`.
      '';
    };

    hostName = mkOption {
      type = types.strMatching "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?";
      default = config.networking.hostName;
      defaultText = lib.literalExpression "config.networking.hostName";
      description = "This host's name in the fleet: the directory hosts/<hostName> and the branch deploy/<hostName>.";
    };

    trustedPublishers = mkOption {
      type = types.nullOr types.lines;
      default = null;
      example = ''publisher@example.org namespaces="git" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA...'';
      description = ''
        The publisher keys this host trusts, in OpenSSH allowed-signers format
        (ssh-keygen(1), ALLOWED SIGNERS). Public keys only: it is written to the store.
        Set this or `trustedPublishersFile`.
      '';
    };

    trustedPublishersFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = lib.literalExpression "./publishers.allowed_signers";
      description = "An allowed-signers file with the publisher keys (instead of `trustedPublishers`).";
    };

    trustedCommanders = mkOption {
      type = types.nullOr types.lines;
      default = null;
      example = ''alice@example.org namespaces="gitops-command" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA...'';
      description = ''
        The keys that may sign commands for this host (reboot, collect-logs, ...; see
        docs/commands.md), in allowed-signers format, namespace `gitops-command`. Unset:
        every command is refused.
      '';
    };

    trustedCommandersFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      description = "An allowed-signers file with the commander keys (instead of `trustedCommanders`).";
    };

    signingKey = mkOption {
      type = pathString;
      default = defaults.signing_key;
      description = ''
        Private key that signs this host's reports; its public half is `key` in
        hosts/<hostName>/host.yaml. A string path, never read at evaluation time.
      '';
    };

    stateDir = mkOption {
      type = pathString;
      default = defaults.state_dir;
      description = "Where the agent keeps its mirror, its last applied commit and unpushed reports.";
    };

    systemProfile = mkOption {
      type = pathString;
      default = defaults.system_profile;
      description = "The system profile the agent adds generations to.";
    };

    action = mkOption {
      type = types.enum [
        "switch"
        "boot"
        "test"
      ];
      default = defaults.action;
      description = ''
        What to do with a new system, as nixos-rebuild names it: `switch` (activate now
        and at boot), `boot` (at the next boot) or `test` (now, not at boot).
      '';
    };

    interval = mkOption {
      type = types.ints.positive;
      default = defaults.poll_interval;
      description = "Seconds between two checks of the deploy branch (the timer's OnUnitInactiveSec).";
    };

    randomizedDelaySec = mkOption {
      type = types.ints.unsigned;
      default = defaults.poll_jitter;
      description = "Up to this many seconds of random delay per check, so a fleet does not fetch at once.";
    };

    bootDelaySec = mkOption {
      type = types.ints.unsigned;
      default = 120;
      description = "Seconds after boot before the first check (the timer's OnBootSec).";
    };

    reportInterval = mkOption {
      type = types.ints.positive;
      default = defaults.report_interval;
      description = "A report (heartbeat) is pushed at least this often, in seconds, even when nothing changed.";
    };

    sshKey = mkOption {
      type = types.nullOr pathString;
      default = defaults.ssh_key;
      example = "/etc/ssh/ssh_host_ed25519_key";
      description = "Private key to log in to an ssh remote (for example the host key, registered as a deploy key).";
    };

    knownHosts = shared.knownHostsOption {
      example = "git.example.org ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA...";
      description = "The git server's host keys (ssh-keyscan output). Required for an ssh remote, unless `knownHostsFile` is set.";
    };

    knownHostsFile = mkOption {
      type = types.nullOr types.path;
      default = defaults.known_hosts;
      description = "A known_hosts file with the git server's host keys (instead of `knownHosts`).";
    };

    httpTokenFile = mkOption {
      type = types.nullOr pathString;
      default = defaults.http_token_file;
      example = "/run/secrets/gitops-token";
      description = "File holding an access token for an https remote.";
    };

    httpUsername = mkOption {
      type = types.str;
      default = defaults.http_username;
      description = "User name sent with `httpTokenFile`.";
    };

    health = {
      failedUnits = mkOption {
        type = types.bool;
        default = defaults.health.failed_units;
        description = "After a switch (or the reboot into a new generation with `action = \"boot\"`), roll back if a systemd unit failed that was not failed before.";
      };
      remote = mkOption {
        type = types.bool;
        default = defaults.health.remote;
        description = ''
          After a switch, check that the git remote is still reachable (retried for
          `health.remoteGrace` seconds). If it stays unreachable the agent goes back, and
          remembers the deploy as bad only if the old system reaches the remote again; if
          the network is simply down, the deploy is tried again at the next check.
        '';
      };
      remoteGrace = mkOption {
        type = types.ints.unsigned;
        default = defaults.health.remote_grace;
        description = "Seconds an unreachable git remote is retried (every 5 s) after a switch before it counts, so a network blip does not undo a good deploy.";
      };
      commands = mkOption {
        type = types.listOf (types.either types.str (types.nonEmptyListOf types.str));
        default = defaults.health.commands;
        example = lib.literalExpression ''[ "curl -fsS http://127.0.0.1:8080/health" [ "systemctl" "is-active" "nginx.service" ] ]'';
        description = "Extra checks after a switch; each must exit 0. A string runs with /bin/sh -c.";
      };
      grace = mkOption {
        type = types.ints.unsigned;
        default = defaults.health.grace;
        description = "Seconds to let units settle after a switch before checking.";
      };
      timeout = mkOption {
        type = types.ints.positive;
        default = defaults.health.timeout;
        description = "Seconds each health command may take.";
      };
    };

    buildArgs = mkOption {
      type = types.listOf types.str;
      default = defaults.build_args;
      example = [
        "--max-jobs"
        "2"
      ];
      description = "Extra arguments for `nix build`.";
    };

    trustOnFirstUse = mkOption {
      type = types.bool;
      default = defaults.trust_on_first_use;
      description = "On the very first run, accept the first correctly signed head (unless `minCommit` pins a floor).";
    };

    minCommit = mkOption {
      type = types.nullOr (types.strMatching "[0-9a-f]{40}");
      default = defaults.min_commit;
      description = "The first applied deploy commit must be this commit or descend from it.";
    };

    maxAge = mkOption {
      type = types.nullOr (types.either types.ints.positive types.str);
      default = defaults.max_age;
      example = "30d";
      description = "Refuse a deploy head committed longer ago than this (seconds, or 5m/1h/2d/1w): freeze protection.";
    };

    watch = mkOption {
      type = types.listOf pathString;
      default = defaults.watch;
      description = "Paths whose change starts a cycle at once (a local mirror updated by a central server).";
    };

    keepGenerations = mkOption {
      type = types.ints.unsigned;
      default = defaults.keep_generations;
      description = "System profile generations to keep (0 keeps all; nix.gc still removes old ones).";
    };

    buildRetryInterval = mkOption {
      type = types.ints.unsigned;
      default = defaults.build_retry_interval;
      description = "Seconds after which a failed build of the same deploy commit is tried again (a download may have failed); 0 never retries until a new commit arrives.";
    };

    buildTimeout = mkOption {
      type = types.ints.positive;
      default = defaults.build_timeout;
      example = 14400;
      description = ''
        Seconds `nix build` may take; then the build is stopped (with its builders) and
        reported as `build-failed: ... timed out`, and tried again after
        `buildRetryInterval`. Raise it for hosts that compile large packages.
      '';
    };

    activationTimeout = mkOption {
      type = types.ints.positive;
      default = defaults.activation_timeout;
      description = ''
        Seconds `switch-to-configuration` may take; then it is stopped, the agent goes back
        to the previous generation and reports `switch-failed: ... timed out`.
      '';
    };

    metricsFile = mkOption {
      type = types.nullOr pathString;
      default = defaults.metrics_file;
      example = "/var/lib/prometheus-node-exporter/gitops.prom";
      description = ''
        Write Prometheus metrics (last result, last deployment, need to reboot, last fetch
        failed, build info) to this file after each cycle, atomically: point it into
        node_exporter's textfile-collector directory
        (`services.prometheus.exporters.node.extraFlags = [ "--collector.textfile.directory=..." ]`).
        See docs/alerts.md.
      '';
    };

    secretsDir = mkOption {
      type = pathString;
      default = defaults.secrets_dir;
      description = ''
        Where the agent decrypts this host's secrets (secrets/secrets.yaml in the fleet),
        one file per secret, before each switch. Must be on a tmpfs (docs/secrets.md).
      '';
    };

    escrow = mkOption {
      type = types.attrsOf types.str;
      default = { };
      example = {
        luks-recovery = "/etc/luks-recovery.key";
        host-key = "/etc/ssh/ssh_host_ed25519_key";
      };
      description = ''
        Recovery material the agent encrypts to `escrowRecipients` and commits in its
        reports branch as escrow/<name>.age (docs/secrets.md#key-escrow). String paths,
        never read at evaluation time.
      '';
    };

    escrowRecipients = mkOption {
      type = types.listOf types.str;
      default = defaults.escrow_recipients;
      description = "The admins' age (age1...) or SSH public keys, as in fleet.yaml `admins`.";
    };

    enrol = {
      # A oneshot unit runs `gitops enroll` until it succeeds once; then <stateDir>/enrolled
      # keeps it from running again. An admin reviews and merges (docs/enroll-host.md).
      enable = lib.mkEnableOption "enrolment at first boot: propose this machine on enroll/<enrol.name>, signed with the host key (`signingKey`)";
      remote = mkOption {
        type = types.str;
        example = "ssh://git@git.example.org/infra/fleet.git";
        description = ''
          The fleet repository the proposal is pushed to: the forge, or the plain repository
          the gitops server mirrors main from. Not the gitops server itself, which refuses
          enroll/* from keys main does not list yet.
        '';
      };
      name = mkOption {
        type = types.strMatching "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?";
        default = cfg.hostName;
        defaultText = lib.literalExpression "config.services.gitops-agent.hostName";
        description = "The name this machine proposes: hosts/<name> and deploy/<name>.";
      };
      profiles = mkOption {
        type = types.listOf (types.strMatching "[A-Za-z0-9_.-]+");
        default = [ ];
        example = [
          "workstation"
          "gis"
        ];
        description = "The profiles the proposed host.yaml and configuration.nix name.";
      };
      owner = mkOption {
        type = types.str;
        default = "";
        example = "jonas.weber@example.org";
        description = "Who is responsible for the machine, for host.yaml `owner`.";
      };
      sshKey = mkOption {
        type = types.nullOr pathString;
        default = null;
        example = "/etc/gitops/enrol_ed25519";
        description = ''
          Private key that logs in to an ssh `enrol.remote` (an enrolment deploy key that may
          push enroll/* branches). A string path, never read at evaluation time.
        '';
      };
      knownHosts = shared.knownHostsOption {
        example = "git.example.org ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA...";
        description = "The host keys of an ssh `enrol.remote` (ssh-keyscan output); checked strictly when set.";
      };
    };

    mode = mkOption {
      type = types.enum [
        "build"
        "substitute"
        "auto"
      ];
      default = defaults.mode;
      description = ''
        How the agent gets the system of a deploy commit. `substitute`: realise exactly
        the store path the signed commit pins (`System-Path`, written by `gitops build`
        and `gitops publish --systems`) from `substituters`, checked against
        `trustedPublicKeys`, never evaluating or building (for hosts too small to
        evaluate NixOS); a commit without one, or a path the caches refuse, is reported
        as `substitute-failed`. `auto`: the same, but build locally when the commit pins
        nothing or the caches refuse. `build`: always evaluate and build locally.
      '';
    };

    substituters = mkOption {
      type = types.listOf types.str;
      default = defaults.substituters;
      example = [ "https://cache.example.org" ];
      description = ''
        Binary caches a pinned system is fetched from (a `file://` directory served by
        any web server, `https://`, `s3://...`). Also added to
        `nix.settings.extra-trusted-substituters`, so the agent may use them through the daemon.
      '';
    };

    trustedPublicKeys = mkOption {
      type = types.listOf types.str;
      default = defaults.trusted_public_keys;
      example = [ "fleet-cache-1:base64..." ];
      description = ''
        Nix public keys (`nix key convert-secret-to-public`) a pinned system's narinfo
        must be signed by. Pinned here, on the host: a cache cannot change them. Also
        added to `nix.settings.extra-trusted-public-keys`.
      '';
    };

    trigger = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Listen on `trigger.address`:`trigger.port` so a local user can ask for a check
          now: open http://127.0.0.1:51337/ and press the button, or from a script
          `curl -X POST -H 'X-Gitops-Trigger: 1' http://127.0.0.1:51337/`. Requests a web
          page could make (cross-site, or without the header or the page's own origin)
          are refused, and at most one request per 30 seconds is accepted. The request
          only starts gitops-agent.service; what gets applied is still only what was signed.
        '';
      };
      address = mkOption {
        type = types.str;
        default = "127.0.0.1";
        description = "Address of the trigger socket. Keep it on loopback.";
      };
      port = mkOption {
        type = types.port;
        default = 51337;
        description = "TCP port of the trigger socket (Bento uses the same one).";
      };
    };

    settings = mkOption {
      type = (pkgs.formats.json { }).type;
      default = { };
      example = {
        health.grace = 30;
      };
      description = ''
        Raw keys of the agent's configuration file, merged over the options above
        (see docs/reference/agent.md). Unknown keys are an error when the agent starts.
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = (cfg.trustedPublishers == null) != (cfg.trustedPublishersFile == null);
        message = "services.gitops-agent: set exactly one of trustedPublishers or trustedPublishersFile.";
      }
      {
        assertion = !(cfg.trustedCommanders != null && cfg.trustedCommandersFile != null);
        message = "services.gitops-agent: set trustedCommanders or trustedCommandersFile, not both.";
      }
      {
        assertion = !(cfg.knownHosts != null && cfg.knownHostsFile != null);
        message = "services.gitops-agent: set knownHosts or knownHostsFile, not both.";
      }
      {
        assertion = !isSshRemote || knownHostsFile != null;
        message = "services.gitops-agent: the ssh remote ${cfg.remote} needs knownHosts (the git server's host key, from ssh-keyscan).";
      }
      {
        # Two controllers switching the same machine would undo each other's work.
        assertion = !config.system.autoUpgrade.enable;
        message = "services.gitops-agent and system.autoUpgrade both switch this system; disable system.autoUpgrade.";
      }
    ];

    # The caches and keys the agent passes to nix-store --realise: accepted from a
    # client only when the daemon's configuration trusts them too. `extra-` keeps
    # nixpkgs' own (cache.nixos.org) instead of replacing them.
    nix.settings = lib.mkIf (cfg.substituters != [ ]) {
      extra-trusted-substituters = cfg.substituters;
      extra-trusted-public-keys = cfg.trustedPublicKeys;
    };

    environment.etc."gitops/agent.yaml".source = configFile;
    environment.systemPackages = [ cfg.package ];

    systemd.services.gitops-agent = {
      description = "nixos-gitops agent: apply this host's signed deploy branch";
      wants = [ "network-online.target" ];
      # sshd creates the host key that signs the reports on its first start.
      after = [
        "network-online.target"
        "sshd.service"
        "sshd-keygen.service"
      ];
      # The service switches the system it belongs to: switch-to-configuration must not
      # stop or restart it half-way (nixpkgs' nixos-upgrade.service does the same).
      restartIfChanged = false;
      unitConfig.X-StopOnRemoval = false;
      path = [
        config.programs.ssh.package # git over ssh
        pkgs.gitMinimal
        config.nix.package.out
      ];
      environment =
        config.nix.envVars
        // {
          HOME = cfg.stateDir;
        }
        // config.networking.proxy.envVars;
      serviceConfig = {
        Type = "oneshot";
        # --verbose: each step, and the build log as it comes, go to the journal.
        ExecStart = "${cfg.package}/bin/gitops --verbose agent --config ${configFile} once";
        # A oneshot has no start time limit by default: a stuck cycle would block every
        # later one. The agent stops a stuck build or switch itself, well before this.
        TimeoutStartSec = timeoutStartSec;
        StateDirectory = lib.mkIf (cfg.stateDir == defaults.state_dir) "gitops-agent";
        # 0711: other users may open a file by name, not list the directory. Only
        # status.json (0644) is meant for them (`gitops agent status` without sudo);
        # state.json, the lock and activation.json are 0600.
        StateDirectoryMode = "0711";
        # Builds and activation scripts run as children of this service: leave the
        # umask nixos-rebuild would have, or activation creates 0700 directories.
        UMask = "0022";
        # Run below interactive work on desktops; services it (re)starts are not affected.
        Nice = 10;
        IOSchedulingClass = "best-effort";
        IOSchedulingPriority = 7;

        # Hardening, as far as switching a whole system allows:
        NoNewPrivileges = true; # already root; nothing it runs needs setuid to gain more
        LockPersonality = true;
        RestrictRealtime = true;
        # Deliberately NOT set, because the service must be able to do what
        # `nixos-rebuild switch` does:
        # - ProtectSystem/ProtectHome/ReadOnlyPaths/PrivateTmp/PrivateDevices/PrivateMounts:
        #   each puts the service in its own mount namespace. switch-to-configuration
        #   writes /etc, /boot, /nix/var and users' homes, and activation scripts mount
        #   things (/run/wrappers, /run/keys, /dev/shm) that must be visible system-wide.
        # - ProtectHostname: activation sets the host name.
        # - ProtectKernelModules/ProtectKernelTunables: activation loads modules and
        #   applies boot.kernel.sysctl.
        # - CapabilityBoundingSet, RestrictNamespaces, SystemCallFilter,
        #   SystemCallArchitectures, MemoryDenyWriteExecute: nix builds run as children
        #   and need namespaces for the sandbox, 32-bit syscalls for i686 derivations
        #   and JIT compilers; bootloader installation needs raw device access.
        # - PrivateNetwork/IPAddressDeny: it fetches, substitutes and pushes.
      };
    };

    systemd.services.gitops-agent-enrol = lib.mkIf cfg.enrol.enable (
      enrolUnit.unit
      // {
        path = [
          config.programs.ssh.package
          pkgs.gitMinimal
        ];
        serviceConfig = enrolUnit.unit.serviceConfig // {
          ExecStart = pkgs.writeShellScript "gitops-agent-enrol" enrolUnit.script;
          StateDirectory = lib.mkIf (cfg.stateDir == defaults.state_dir) "gitops-agent";
          StateDirectoryMode = "0711";
        };
      }
    );

    systemd.timers.gitops-agent = {
      description = "Check this host's deploy branch periodically";
      wantedBy = [ "timers.target" ];
      timerConfig = {
        OnBootSec = cfg.bootDelaySec;
        OnUnitInactiveSec = cfg.interval;
        RandomizedDelaySec = cfg.randomizedDelaySec;
      };
    };

    systemd.sockets.gitops-agent-trigger = lib.mkIf cfg.trigger.enable {
      description = "Local trigger for the nixos-gitops agent";
      wantedBy = [ "sockets.target" ];
      listenStreams = [ "${cfg.trigger.address}:${toString cfg.trigger.port}" ];
      socketConfig = {
        Accept = true;
        MaxConnections = 4;
        # A burst of requests cannot turn into a burst of services.
        TriggerLimitIntervalSec = "10s";
        TriggerLimitBurst = 20;
      };
    };

    systemd.services."gitops-agent-trigger@" = lib.mkIf cfg.trigger.enable {
      description = "Answer a local request to run the nixos-gitops agent now";
      serviceConfig = shared.sandbox // {
        ExecStart = "${agentCommand} trigger --http --start-unit gitops-agent.service";
        StandardInput = "socket";
        StandardOutput = "socket";
        StandardError = "journal";
        # Root only to ask systemd (over /run/systemd/private) to start one unit; it
        # needs no capability, no network of its own (the connection is passed in)
        # and no writable file system apart from the agent's trigger file.
        RuntimeMaxSec = 30;
        PrivateNetwork = true;
        RestrictAddressFamilies = [ "AF_UNIX" ];
        ReadWritePaths = [ "-${cfg.stateDir}" ];
        UMask = "0077";
      };
    };
  };
}
