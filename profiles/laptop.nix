# Laptops: power management, the office VPN when away, updates that wait for a reboot.
{ lib, ... }:
{
  services.power-profiles-daemon.enable = true;
  services.thermald.enable = lib.mkDefault true;
  networking.networkmanager.wifi.powersave = true;

  fleet.vpn.enable = true;

  # Apply new configurations at the next boot rather than under the user's hands on
  # the road; the site shows the laptop as "reboot pending" until then.
  services.gitops-agent.action = "boot";
  # Laptops sleep a lot: check every 15 minutes when awake.
  services.gitops-agent.interval = 900;
}
