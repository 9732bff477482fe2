# Backups to the NAS (nas-1). ZFS datasets: sanoid snapshots them, syncoid sends the
# snapshots (raw, so encrypted datasets stay encrypted). Other data: restic over sftp.
# The restic repository password is a fleet secret (secrets/secrets.yaml:
# restic-password), decrypted by the agent into /run/gitops-secrets; the ssh keys that
# reach the NAS are made on the host at enrolment and never leave it.
{ config, lib, ... }:
let
  cfg = config.fleet.backups;
  host = config.networking.hostName;
in
{
  options.fleet.backups = {
    nas = lib.mkOption {
      type = lib.types.str;
      default = "nas-1.example.org";
      description = "The backup NAS (reached as backup@<nas> over ssh).";
    };
    zfsDatasets = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ ];
      example = [ "tank/projects" ];
      description = "ZFS datasets to snapshot hourly and send to the NAS daily (with their children).";
    };
    paths = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ ];
      example = [ "/home" ];
      description = "Directories on non-ZFS file systems to back up with restic.";
    };
  };

  config = lib.mkMerge [
    {
      programs.ssh.knownHosts.${cfg.nas}.publicKey =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICIhe9RsjmR6vSHdUtwedmp3bhjBrNrART5waGKQjNzp";
    }

    (lib.mkIf (cfg.zfsDatasets != [ ]) {
      services.sanoid = {
        enable = true;
        templates.fleet = {
          hourly = 36;
          daily = 30;
          monthly = 6;
          yearly = 0;
          autosnap = true;
          autoprune = true;
        };
        datasets = lib.genAttrs cfg.zfsDatasets (_: {
          useTemplate = [ "fleet" ];
          recursive = true;
        });
      };
      services.syncoid = {
        enable = true;
        interval = "daily";
        sshKey = "/var/lib/syncoid/id_ed25519";
        # Send sanoid's snapshots instead of making syncoid's own.
        commonArgs = [ "--no-sync-snap" ];
        commands = lib.genAttrs cfg.zfsDatasets (dataset: {
          target = "backup@${cfg.nas}:tank/backups/${host}/${baseNameOf dataset}";
          recursive = true;
          sendOptions = "w";
        });
      };
    })

    (lib.mkIf (cfg.paths != [ ]) {
      services.restic.backups.nas = {
        repository = "sftp:backup@${cfg.nas}:/backups/${host}";
        # A path as a string: the password is read at run time, never copied to the store.
        passwordFile = "/run/gitops-secrets/restic-password";
        extraOptions = [ "sftp.command='ssh backup@${cfg.nas} -i /var/lib/restic/id_ed25519 -s sftp'" ];
        initialize = true;
        inherit (cfg) paths;
        exclude = [
          "/home/*/.cache"
          "/home/*/.local/share/Trash"
        ];
        timerConfig = {
          OnCalendar = "daily";
          Persistent = true;
          RandomizedDelaySec = "1h";
        };
        pruneOpts = [
          "--keep-daily 7"
          "--keep-weekly 5"
          "--keep-monthly 12"
        ];
      };
    })
  ];
}
