# services.gitops-server: the git server hosts, the publisher and the site talk to
# (docs/server.md). OpenSSH with a forced command per key, git's hooks, one repository
# per host, all made and kept up to date from main by `gitops server sync`.
#
# ./server-config.nix renders server.yaml, ./server-sshd.nix sshd's settings (the same
# as the snippet `gitops server sync` writes), ./server-sync.sh creates and syncs the
# directory; tests/test_nixos_server.py checks all three against the Python side.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.gitops-server;
  inherit (lib) mkOption types;
  shared = import ./lib.nix { inherit lib; };
  inherit (shared) pathString;

  command = "${cfg.package}/bin/gitops";
  serverYaml = pkgs.writeText "gitops-server.yaml" (
    import ./server-config.nix { cfg = cfg // { inherit command; }; }
  );
  sshd = import ./server-sshd.nix {
    inherit (cfg) user;
    authorizedKeysFile = "${cfg.dataDir}/authorized_keys";
    inherit (cfg.sshd) maxStartups loginGraceTime;
  };

  knownHostsFile = if cfg.knownHosts != null then pkgs.writeText "gitops-server-known-hosts" cfg.knownHosts else null;
  sshCommand = shared.sshCommand {
    inherit (cfg) sshKey;
    inherit knownHostsFile;
  };

  syncScript = pkgs.writeShellApplication {
    name = "gitops-server-sync";
    runtimeInputs = [
      pkgs.gitMinimal
      config.programs.ssh.package
      cfg.package
    ];
    text = builtins.readFile ./server-sync.sh;
  };

  isSshUrl = shared.isSshUrl cfg.repository;

  environment = {
    HOME = cfg.dataDir;
    GITOPS_SERVER_DIR = cfg.dataDir;
    GITOPS_SERVER_REPOSITORY = cfg.repository;
    GITOPS_SERVER_CONFIG = "${serverYaml}";
    GITOPS_SERVER_COMMAND = command;
    GITOPS_SERVER_MIRROR = if cfg.mirror then "1" else "0";
    GIT_SSH_COMMAND = sshCommand;
  } // config.networking.proxy.envVars;

  hardening = shared.sandbox // {
    User = cfg.user;
    Group = cfg.group;
    UMask = "0027";
    ReadWritePaths = [ cfg.dataDir ];
  };

  # A oneshot that works in the server directory once gitops-server-setup made it.
  afterSetup = description: serviceConfig: {
    inherit description environment;
    after = [ "gitops-server-setup.service" ];
    requisite = [ "gitops-server-setup.service" ];
    serviceConfig = hardening // { Type = "oneshot"; } // serviceConfig;
  };
in
{
  # site.enable sets services.gitops-site's options.
  imports = [ ./site.nix ];

  options.services.gitops-server = {
    enable = lib.mkEnableOption "the gitops server: per-host repositories behind sshd's forced commands, every push checked";

    package = shared.packageOption { inherit config pkgs; } "`gitops server`";

    repository = mkOption {
      type = types.str;
      example = "ssh://git@forge.example.org/infra/fleet.git";
      description = ''
        The fleet repository. The server is made from it the first time (main, and any
        deploy/* and reports/* branches: moving from a plain bare repository keeps them).
        With `mirror`, main keeps coming from it: the forge where pull requests merge.
      '';
    };

    mirror = mkOption {
      type = types.bool;
      default = true;
      description = ''
        main is mirrored from `repository` (checked every `syncInterval`) and nobody pushes
        main over ssh. With false, admins push main to fleet.git, each commit on its
        first-parent line signed by a key in `admins`.
      '';
    };

    admins = mkOption {
      type = types.attrsOf types.str;
      default = { };
      example = {
        "alice@example.org" = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA... alice";
      };
      description = "Who may push main when `mirror` is false: principal = public key line.";
    };

    dataDir = mkOption {
      type = pathString;
      default = "/var/lib/gitops-server";
      description = "The server directory: fleet.git, hosts/<host>.git, authorized_keys, hooks, server.yaml.";
    };

    user = mkOption {
      type = types.str;
      default = "git";
      description = "The user hosts, the publisher and admins log in as (ssh://git@server/...).";
    };

    group = mkOption {
      type = types.str;
      default = "git";
      description = "Group of the server directory; the site's user joins it with `site.enable`.";
    };

    syncInterval = mkOption {
      type = types.str;
      default = "1min";
      description = "With `mirror`: how often to ask the forge whether main moved (one ref, a few hundred bytes), and sync when it did.";
    };

    maxPushes = mkOption {
      type = types.nullOr types.ints.positive;
      default = null;
      description = "Pushes checked at once (server.yaml max_pushes); null: 4 per CPU.";
    };

    pushQueue = mkOption {
      type = types.nullOr types.ints.unsigned;
      default = null;
      description = "Pushes that may wait for one of those (server.yaml push_queue); null: 32 per CPU.";
    };

    sshKey = mkOption {
      type = types.nullOr pathString;
      default = null;
      example = "/var/lib/gitops-server/forge_ed25519";
      description = "Private key to fetch main from an ssh `repository`, readable by `user`. A string path: it never enters the store.";
    };

    knownHosts = shared.knownHostsOption {
      example = "forge.example.org ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA...";
      description = "The forge's host keys (ssh-keyscan output), for an ssh `repository`.";
    };

    sshd = {
      maxStartups = mkOption {
        type = types.str;
        default = "1000:30:2000";
        description = ''
          sshd's MaxStartups (start:rate:full): connections that may be authenticating at
          once. Sized for about 10,000 hosts reporting at random moments, or 1,000 at once
          (docs/server.md); stock sshd's 10:30:100 refuses a busy fleet at connect.
        '';
      };
      loginGraceTime = mkOption {
        type = types.ints.positive;
        default = 60;
        description = "sshd's LoginGraceTime in seconds: an unauthenticated connection is dropped after this.";
      };
    };

    maintenance = {
      interval = mkOption {
        type = types.str;
        default = "hourly";
        description = ''
          When `gitops server maintain` runs (systemd OnCalendar): it packs the loose objects
          that report pushes and the fan-in leave in every repository, and packs refs
          (docs/server.md#maintenance). A repository with fewer than 100 loose objects is
          left alone, so a run costs little where little happened.
        '';
      };
      jobs = mkOption {
        type = types.nullOr types.ints.positive;
        default = null;
        description = "Repositories maintained at once; null: half the CPUs (pushes keep the rest).";
      };
      archiveAfterMonths = mkOption {
        type = types.nullOr types.ints.unsigned;
        default = null;
        example = 3;
        description = ''
          Before each maintenance run, `gitops server archive --months N`: every host's
          reports get a mark (refs/archive/reports/<host>/<YYYY-MM>) for each month that
          ended more than N months ago, and the history below the marks moves into a pack
          that maintenance never rewrites. History is never rewritten. null: no archive.
        '';
      };
    };

    site = {
      enable = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Build and serve the fleet site on this machine from the server's fleet.git
          (services.gitops-site with `repository` set to it; its other options apply).
        '';
      };
    };
  };

  config = lib.mkIf cfg.enable (
    lib.mkMerge [
      {
        assertions = [
          {
            assertion = cfg.mirror || cfg.admins != { };
            message = "services.gitops-server: with mirror = false, list the admins who may push main (admins).";
          }
          {
            assertion = !cfg.mirror || !isSshUrl || knownHostsFile != null;
            message = "services.gitops-server: the ssh repository ${cfg.repository} needs knownHosts (the forge's host key, from ssh-keyscan).";
          }
        ];

        users.users = lib.mkIf (cfg.user == "git") {
          git = {
            isSystemUser = true;
            inherit (cfg) group;
            home = cfg.dataDir;
            # sshd runs each key's forced command with the user's shell (`sh -c ...`).
            useDefaultShell = true;
          };
        };
        users.groups = lib.mkIf (cfg.group == "git") { git = { }; };

        # sshd reads authorized_keys only if no directory above it is group- or
        # world-writable (StrictModes).
        systemd.tmpfiles.settings."10-gitops-server".${cfg.dataDir}.d = {
          inherit (cfg) user group;
          mode = "0750";
        };

        services.openssh = {
          enable = true;
          inherit (sshd) settings;
          extraConfig = lib.mkAfter sshd.matchBlock;
        };

        systemd.services.gitops-server-setup = {
          description = "Create the gitops server directory and bring it in step with main";
          wantedBy = [ "multi-user.target" ];
          wants = [ "network-online.target" ];
          after = [ "network-online.target" ];
          inherit environment;
          serviceConfig = hardening // {
            Type = "oneshot";
            RemainAfterExit = true;
            ExecStart = "${lib.getExe syncScript} setup";
          };
        };

        systemd.services.gitops-server-sync = lib.mkIf cfg.mirror (
          afterSetup "Mirror main from the forge into the gitops server when it moved" {
            ExecStart = "${lib.getExe syncScript} poll";
          }
        );

        systemd.timers.gitops-server-sync = lib.mkIf cfg.mirror {
          description = "Look whether the forge's main moved";
          wantedBy = [ "timers.target" ];
          timerConfig = {
            OnBootSec = "1min";
            OnUnitActiveSec = cfg.syncInterval;
          };
        };
      }

      {
        systemd.services.gitops-server-maintain =
          afterSetup "Pack what pushes left loose in the gitops server's repositories" {
            Nice = 10;
            IOSchedulingClass = "idle";
            ExecStartPre = lib.optional (cfg.maintenance.archiveAfterMonths != null)
              "${command} server archive --dir ${cfg.dataDir} --months ${toString cfg.maintenance.archiveAfterMonths}";
            ExecStart =
              "${command} server maintain --dir ${cfg.dataDir}"
              + lib.optionalString (cfg.maintenance.jobs != null) " --jobs ${toString cfg.maintenance.jobs}";
          };

        systemd.timers.gitops-server-maintain = {
          description = "Pack the gitops server's repositories";
          wantedBy = [ "timers.target" ];
          timerConfig = {
            OnCalendar = cfg.maintenance.interval;
            Persistent = true;
            RandomizedDelaySec = "5min";
          };
        };
      }

      (lib.mkIf cfg.site.enable {
        services.gitops-site = {
          enable = true;
          repository = "${cfg.dataDir}/fleet.git";
        };
        users.users.${config.services.gitops-site.user}.extraGroups = [ cfg.group ];
        # git refuses a repository another user owns unless it is named safe.
        systemd.services.gitops-site.environment = {
          GIT_CONFIG_COUNT = "1";
          GIT_CONFIG_KEY_0 = "safe.directory";
          GIT_CONFIG_VALUE_0 = "${cfg.dataDir}/fleet.git";
        };
      })
    ]
  );
}
