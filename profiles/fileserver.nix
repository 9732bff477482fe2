# File server: ZFS pool "tank" shared over SMB3 to the office, backed up to the NAS.
{ config, ... }:
{
  boot.supportedFilesystems = [ "zfs" ];
  boot.zfs.extraPools = [ "tank" ];
  services.zfs.autoScrub.enable = true;
  services.zfs.trim.enable = true;

  users.groups = {
    staff = { };
    gis = { };
    media = { };
  };

  services.samba = {
    enable = true;
    openFirewall = true;
    settings = {
      global = {
        "server string" = "Riverbend file server";
        "server min protocol" = "SMB3";
        "smb encrypt" = "required";
        "map to guest" = "never";
        "hosts allow" = "10.20. 127.";
      };
      projects = {
        path = "/tank/projects";
        "read only" = "no";
        "valid users" = "@staff";
        "create mask" = "0660";
        "directory mask" = "2770";
      };
      gis = {
        path = "/tank/gis";
        "read only" = "no";
        "valid users" = "@gis";
        "create mask" = "0660";
        "directory mask" = "2770";
      };
      media = {
        path = "/tank/media";
        "read only" = "no";
        "valid users" = "@media";
        "create mask" = "0660";
        "directory mask" = "2770";
      };
    };
  };
  services.samba-wsdd = {
    enable = true;
    openFirewall = true;
  };

  fleet.backups.zfsDatasets = [
    "tank/projects"
    "tank/gis"
    "tank/media"
  ];

  # A configuration that breaks the shares is rolled back by the agent.
  services.gitops-agent.health.commands = [
    [
      "${config.systemd.package}/bin/systemctl"
      "is-active"
      "--quiet"
      "samba-smbd.service"
    ]
  ];
}
