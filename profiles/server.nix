# Headless servers in the rack: no desktop, no password manager, watchdog and disk health.
{ lib, ... }:
{
  fleet.security.passwordManager = null;

  services.smartd.enable = true;
  systemd.settings.Manager.RuntimeWatchdogSec = lib.mkDefault "30s";
  documentation.nixos.enable = false;

  # Services on a server take longer to settle after a switch before health is judged.
  services.gitops-agent.health.grace = 30;
}
