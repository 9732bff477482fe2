# services.gitops-site: keep a mirror of the fleet repository, build the static fleet
# site from it on a timer, and serve it with nginx.
#
# Each build replaces the served directory with one atomic rename, so nginx never
# serves half a site. The site checks every report's signature itself; this module
# only needs read access to the repository.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.gitops-site;
  vhost = config.services.nginx.virtualHosts.${cfg.nginx.virtualHost};
  inherit (lib) mkOption types;
  shared = import ./lib.nix { inherit lib; };
  inherit (shared) pathString;

  knownHostsFile =
    if cfg.knownHostsFile != null then
      cfg.knownHostsFile
    else if cfg.knownHosts != null then
      pkgs.writeText "gitops-site-known-hosts" cfg.knownHosts
    else
      null;

  isSshUrl = shared.isSshUrl cfg.repository;

  sshCommand = shared.sshCommand {
    inherit (cfg) sshKey;
    inherit knownHostsFile;
  };

  # The token stays in its file: git asks this helper, which reads it at run time.
  credentialHelper = pkgs.writeShellScript "gitops-site-credentials" ''
    if [ "$1" = get ]; then
      printf 'username=%s\n' ${lib.escapeShellArg cfg.httpUsername}
      printf 'password=%s\n' "$(cat ${lib.escapeShellArg cfg.httpTokenFile})"
    fi
  '';

  update = pkgs.writeShellApplication {
    name = "gitops-site-update";
    runtimeInputs = [
      pkgs.gitMinimal
      config.programs.ssh.package
      cfg.package
    ];
    text = builtins.readFile ./site-update.sh;
  };
in
{
  options.services.gitops-site = {
    enable = lib.mkEnableOption "the nixos-gitops fleet site (inventory, drift, compliance, audit trail)";

    package = shared.packageOption { inherit config pkgs; } "`gitops site build`";

    repository = mkOption {
      type = types.str;
      example = "ssh://git@git.example.org/infra/fleet.git";
      description = "URL of the fleet repository (read access to main, deploy/* and reports/* is enough).";
    };

    interval = mkOption {
      type = types.str;
      default = "5min";
      description = "How often to fetch and rebuild (a systemd time span).";
    };

    historyHosts = mkOption {
      type = types.ints.unsigned;
      default = 1000;
      description = "Hosts whose whole month of reports one build reads (`gitops site build --history-hosts`). When more hosts were never read (the first build of a large fleet), every host's newest reports come first and the next builds read on, this many hosts each.";
    };

    stateDir = mkOption {
      type = pathString;
      default = "/var/lib/gitops-site";
      description = "Holds the mirror (mirror.git), the site (www) and the site builder's cache (.www.cache).";
    };

    user = mkOption {
      type = types.str;
      default = "gitops-site";
      description = "User that fetches and builds; nginx reads the builds through its group.";
    };

    group = mkOption {
      type = types.str;
      default = "gitops-site";
      description = "Group of the state directory; nginx is added to it.";
    };

    sshKey = mkOption {
      type = types.nullOr pathString;
      default = null;
      example = "/var/lib/gitops-site/id_ed25519";
      description = "Private key for an ssh repository URL, readable by `user`. A string path: it never enters the store.";
    };

    knownHosts = shared.knownHostsOption {
      example = "git.example.org ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA...";
      description = "The git server's host keys (ssh-keyscan output), for an ssh repository URL.";
    };

    knownHostsFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      description = "A known_hosts file with the git server's host keys (instead of `knownHosts`).";
    };

    httpTokenFile = mkOption {
      type = types.nullOr pathString;
      default = null;
      example = "/run/secrets/gitops-site-token";
      description = "File holding a read token for an https repository URL, readable by `user`.";
    };

    httpUsername = mkOption {
      type = types.str;
      default = "gitops";
      description = "User name sent with `httpTokenFile`.";
    };

    nginx = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = "Serve the site with nginx. Turn off to serve `<stateDir>/www` some other way.";
      };
      virtualHost = mkOption {
        type = types.str;
        default = "fleet.${config.networking.fqdnOrHostName}";
        defaultText = lib.literalExpression ''"fleet.''${config.networking.fqdnOrHostName}"'';
        example = "fleet.intranet.example.org";
        description = ''
          Name of the nginx virtual host. Further settings (TLS with `enableACME` and
          `forceSSL`, extra locations) go to services.nginx.virtualHosts.<name> as usual.
        '';
      };
      listenAddress = mkOption {
        type = types.str;
        default = "0.0.0.0";
        example = "10.20.0.5";
        description = ''
          Address nginx listens on for the site (port 80, and 443 when the virtual host
          has TLS). Use "[::]" for IPv6.
        '';
      };
      openFirewall = mkOption {
        type = types.bool;
        default = false;
        description = "Open port 80 (and 443 when the virtual host has TLS) in the firewall.";
      };
      basicAuthFile = mkOption {
        type = types.nullOr pathString;
        default = null;
        example = "/run/secrets/fleet-site.htpasswd";
        description = ''
          An htpasswd file (e.g. from `htpasswd -B -c FILE alice`) to require a login.
          A string path, readable by nginx; it never enters the store.
        '';
      };
    };
  };

  config = lib.mkIf cfg.enable (
    lib.mkMerge [
      {
        assertions = [
          {
            assertion = !(cfg.knownHosts != null && cfg.knownHostsFile != null);
            message = "services.gitops-site: set knownHosts or knownHostsFile, not both.";
          }
          {
            # ssh runs without a terminal: an unknown server key could only be refused.
            assertion = !isSshUrl || knownHostsFile != null;
            message = "services.gitops-site: the ssh repository ${cfg.repository} needs knownHosts (the git server's host key, from ssh-keyscan).";
          }
        ];

        users.users = lib.mkIf (cfg.user == "gitops-site") {
          gitops-site = {
            isSystemUser = true;
            inherit (cfg) group;
            home = cfg.stateDir;
          };
        };
        users.groups = lib.mkIf (cfg.group == "gitops-site") { gitops-site = { }; };

        systemd.tmpfiles.settings."10-gitops-site".${cfg.stateDir}.d = {
          inherit (cfg) user group;
          mode = "0750";
        };

        systemd.services.gitops-site = {
          description = "Fetch the fleet repository and rebuild the fleet site";
          wants = [ "network-online.target" ];
          after = [ "network-online.target" ];
          environment =
            {
              HOME = cfg.stateDir;
              GITOPS_SITE_STATE = cfg.stateDir;
              GITOPS_SITE_REPOSITORY = cfg.repository;
              GITOPS_SITE_HISTORY_HOSTS = toString cfg.historyHosts;
              GIT_SSH_COMMAND = sshCommand;
            }
            // lib.optionalAttrs (cfg.httpTokenFile != null) {
              GIT_CONFIG_COUNT = "1";
              GIT_CONFIG_KEY_0 = "credential.helper";
              GIT_CONFIG_VALUE_0 = "${credentialHelper}";
            }
            // config.networking.proxy.envVars;
          serviceConfig = shared.sandbox // {
            Type = "oneshot";
            ExecStart = lib.getExe update;
            User = cfg.user;
            Group = cfg.group;
            UMask = "0022";
            ReadWritePaths = [ cfg.stateDir ];
          };
        };

        systemd.timers.gitops-site = {
          description = "Rebuild the fleet site periodically";
          wantedBy = [ "timers.target" ];
          timerConfig = {
            OnBootSec = "1min";
            OnUnitInactiveSec = cfg.interval;
          };
        };
      }

      (lib.mkIf cfg.nginx.enable {
        users.users.${config.services.nginx.user}.extraGroups = [ cfg.group ];

        services.nginx = {
          enable = true;
          virtualHosts.${cfg.nginx.virtualHost} = {
            # Addresses, not listen entries: enableACME/forceSSL on this virtual host
            # then add port 443 as usual.
            listenAddresses = [ cfg.nginx.listenAddress ];
            # Looked up per request, so a new build is served as soon as it is swapped in.
            root = "${cfg.stateDir}/www";
            basicAuthFile = cfg.nginx.basicAuthFile;
            extraConfig = ''
              add_header X-Content-Type-Options nosniff always;
              add_header Referrer-Policy same-origin always;
              add_header X-Frame-Options DENY always;
              # Reports arrive all the time: make browsers revalidate.
              add_header Cache-Control "no-cache" always;
            '';
            locations."/".tryFiles = "$uri $uri/index.html =404";
          };
        };

        networking.firewall.allowedTCPPorts = lib.mkIf cfg.nginx.openFirewall (
          [ 80 ] ++ lib.optional (vhost.forceSSL || vhost.addSSL || vhost.onlySSL) 443
        );
      })
    ]
  );
}
