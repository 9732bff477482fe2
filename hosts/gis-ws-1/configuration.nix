# GIS analysis workstation (Li Wei). Rasters live on the ZFS pool gisdata.
{ ... }:
{
  imports = [
    ./hardware-configuration.nix
    ../../profiles/workstation.nix
    ../../profiles/gis.nix
  ];

  users.users.li = {
    isNormalUser = true;
    description = "Li Wei";
    extraGroups = [ "networkmanager" ];
  };

  # The data pool on the second disk; /home goes to the NAS with restic (workstation).
  boot.supportedFilesystems = [ "zfs" ];
  boot.zfs.extraPools = [ "gisdata" ];
  services.zfs.autoScrub.enable = true;
  fleet.backups.zfsDatasets = [ "gisdata/projects" ];

  system.stateVersion = "25.05";
}
