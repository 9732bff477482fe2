# Lobby kiosk: one full-screen browser on the visitor page, no logins, nightly reboot.
{ pkgs, ... }:
{
  users.users.kiosk = {
    isNormalUser = true;
    description = "Lobby kiosk";
  };

  services.cage = {
    enable = true;
    user = "kiosk";
    program = "${pkgs.firefox}/bin/firefox --kiosk --private-window https://intranet.example.org/lobby";
  };

  fleet.security.passwordManager = null;

  # The screen must not change while visitors look at it: new configurations take
  # effect at the nightly reboot.
  services.gitops-agent.action = "boot";
  systemd.services.nightly-reboot = {
    description = "Reboot the kiosk into its newest configuration";
    startAt = "03:30";
    serviceConfig.Type = "oneshot";
    script = "/run/current-system/sw/bin/systemctl reboot";
  };
}
