# Developer workstation, web mapping portal team (Ben Okafor).
{ ... }:
{
  imports = [
    ./hardware-configuration.nix
    ../../profiles/workstation.nix
    ../../profiles/developer.nix
  ];

  users.users.ben = {
    isNormalUser = true;
    description = "Ben Okafor";
    extraGroups = [
      "networkmanager"
      "podman"
    ];
  };

  system.stateVersion = "24.11";
}
