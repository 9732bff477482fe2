# Visitor information screen in the lobby (Raspberry Pi 4).
{ ... }:
{
  imports = [
    ./hardware-configuration.nix
    ../../profiles/kiosk.nix
  ];

  # Exempt from disk encryption until 2027-06-30: see exemptions in host.yaml.
  fleet.security.requireDiskEncryption = false;

  system.stateVersion = "25.05";
}
