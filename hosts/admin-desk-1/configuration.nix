# Reception and accounts desk (Maria Lopez).
{ ... }:
{
  imports = [
    ./hardware-configuration.nix
    ../../profiles/workstation.nix
    ../../profiles/office.nix
  ];

  users.users.maria = {
    isNormalUser = true;
    description = "Maria Lopez";
    extraGroups = [ "networkmanager" ];
  };

  system.stateVersion = "24.11";
}
