# Field planner's laptop for site visits (Anna Schmidt).
{ ... }:
{
  imports = [
    ./hardware-configuration.nix
    ../../profiles/workstation.nix
    ../../profiles/laptop.nix
    ../../profiles/office.nix
  ];

  users.users.anna = {
    isNormalUser = true;
    description = "Anna Schmidt";
    extraGroups = [ "networkmanager" ];
  };

  fleet.vpn.address = "10.20.8.23/32";

  system.stateVersion = "25.05";
}
