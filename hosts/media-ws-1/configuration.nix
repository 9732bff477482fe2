# Video and photo editing workstation (Sam Novak). Footage lives on the mirrored ZFS pool media.
{ ... }:
{
  imports = [
    ./hardware-configuration.nix
    ../../profiles/workstation.nix
    ../../profiles/media.nix
  ];

  users.users.sam = {
    isNormalUser = true;
    description = "Sam Novak";
    extraGroups = [
      "networkmanager"
      "audio"
      "video"
    ];
  };

  boot.supportedFilesystems = [ "zfs" ];
  boot.zfs.extraPools = [ "media" ];
  services.zfs.autoScrub.enable = true;
  fleet.backups.zfsDatasets = [ "media/projects" ];

  system.stateVersion = "25.05";
}
