# services.gitops-site: keep a mirror of the fleet repository, build the static fleet
# site from it on a timer, and serve it with nginx.
#
# Each build goes to a new directory; a symlink swap makes it live, so nginx never
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
  inherit (lib) mkOption types;

  pathString = types.strMatching "/.*";

  knownHostsFile =
    if cfg.knownHostsFile != null then
      cfg.knownHostsFile
    else if cfg.knownHosts != null then
      pkgs.writeText "gitops-site-known-hosts" cfg.knownHosts
    else
      null;

  sshCommand = lib.concatStringsSep " " (
    [
      "ssh"
      "-o BatchMode=yes"
      "-o IdentitiesOnly=yes"
    ]
    ++ lib.optionals (cfg.sshKey != null) [ "-i ${lib.escapeShellArg cfg.sshKey}" ]
    ++ lib.optionals (knownHostsFile != null) [
      "-o StrictHostKeyChecking=yes"
      "-o UserKnownHostsFile=${knownHostsFile}"
    ]
  );

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
      pkgs.coreutils
      pkgs.findutils
      pkgs.gitMinimal
      config.programs.ssh.package
      cfg.package
    ];
    text = ''
      state=${lib.escapeShellArg cfg.stateDir}
      mirror="$state/mirror.git"
      www="$state/www"
      remote=${lib.escapeShellArg cfg.repository}
      git_=(git -c core.sshCommand=${lib.escapeShellArg sshCommand} ${
        lib.optionalString (cfg.httpTokenFile != null) "-c credential.helper=${credentialHelper}"
      })

      # 1. Mirror the repository: main, every deploy/<host> and reports/<host>.
      if [ ! -d "$mirror" ]; then
        rm -rf "$mirror.new"
        "''${git_[@]}" clone --quiet --mirror "$remote" "$mirror.new"
        mv "$mirror.new" "$mirror"
      else
        "''${git_[@]}" -C "$mirror" remote set-url origin "$remote"
        "''${git_[@]}" -C "$mirror" fetch --quiet --prune origin
      fi

      # 2. Build into a fresh directory. Always rebuild, even with no new commit:
      #    "last seen" and "stale" depend on the time of the build.
      mkdir -p "$www"
      new=$(mktemp -d "$www/build.XXXXXXXX")
      trap 'rm -rf "$new"' EXIT
      gitops site build --repo "$mirror" --out "$new"
      chmod 0755 "$new"

      # 3. Swap the symlink atomically (rename over the old one).
      ln -sfn "$(basename "$new")" "$www/current.new"
      mv -T "$www/current.new" "$www/current"
      trap - EXIT

      # 4. Keep the live build and the one before it (a reader may still be on it).
      find "$www" -mindepth 1 -maxdepth 1 -type d -name 'build.*' -printf '%T@ %f\n' \
        | sort -rn | tail -n +3 | cut -d' ' -f2 \
        | while read -r old; do
            [ "$old" = "$(readlink "$www/current")" ] || rm -rf "''${www:?}/$old"
          done
    '';
  };
in
{
  options.services.gitops-site = {
    enable = lib.mkEnableOption "the nixos-gitops fleet site (inventory, drift, compliance, audit trail)";

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ./package.nix { nix = config.nix.package; };
      defaultText = lib.literalExpression "pkgs.callPackage ./package.nix { nix = config.nix.package; }";
      description = "The nixos-gitops package (it provides `gitops site build`).";
    };

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

    stateDir = mkOption {
      type = pathString;
      default = "/var/lib/gitops-site";
      description = "Holds the mirror (mirror.git) and the builds (www/current is the live one).";
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

    knownHosts = mkOption {
      type = types.nullOr types.lines;
      default = null;
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
        description = "Serve the site with nginx. Turn off to serve `<stateDir>/www/current` some other way.";
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
        description = "Address nginx listens on for the site.";
      };
      port = mkOption {
        type = types.port;
        default = 80;
        description = "Port nginx listens on for the site.";
      };
      openFirewall = mkOption {
        type = types.bool;
        default = false;
        description = "Open `port` in the firewall.";
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
          environment = {
            HOME = cfg.stateDir;
          } // config.networking.proxy.envVars;
          serviceConfig = {
            Type = "oneshot";
            ExecStart = lib.getExe update;
            User = cfg.user;
            Group = cfg.group;
            UMask = "0022";
            ReadWritePaths = [ cfg.stateDir ];
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
            listen = [
              {
                addr = cfg.nginx.listenAddress;
                inherit (cfg.nginx) port;
              }
            ];
            # Resolved per request, so the symlink swap takes effect at once.
            root = "${cfg.stateDir}/www/current";
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

        networking.firewall.allowedTCPPorts = lib.mkIf cfg.nginx.openFirewall [ cfg.nginx.port ];
      })
    ]
  );
}
