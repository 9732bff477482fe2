# HR and payroll desk (Tom Becker).
{ ... }:
{
  imports = [
    ./hardware-configuration.nix
    ../../profiles/workstation.nix
    ../../profiles/office.nix
  ];

  users.users.tom = {
    isNormalUser = true;
    description = "Tom Becker";
    extraGroups = [ "networkmanager" ];
  };

  system.stateVersion = "25.05";
}
