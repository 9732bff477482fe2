# Laptops: power management, the office VPN when away, updates that wait for a reboot.
{ lib, ... }:
{
  services.power-profiles-daemon.enable = true;
  services.thermald.enable = lib.mkDefault true;
  networking.networkmanager.wifi.powersave = true;
  # The office Wi-Fi, its passphrase a fleet secret (secrets/secrets.yaml: wifi-office,
  # `OFFICE_PSK=...`): NetworkManager substitutes $OFFICE_PSK from the decrypted file.
  networking.networkmanager.ensureProfiles = {
    environmentFiles = [ "/run/gitops-secrets/wifi-office" ];
    profiles.office = {
      connection = {
        id = "Riverbend office";
        type = "wifi";
      };
      wifi.ssid = "riverbend";
      wifi-security = {
        key-mgmt = "wpa-psk";
        psk = "$OFFICE_PSK";
      };
    };
  };

  fleet.vpn.enable = true;

  # Apply new configurations at the next boot rather than under the user's hands on
  # the road; the site shows the laptop as "reboot pending" until then.
  services.gitops-agent.action = "boot";
  # Laptops sleep a lot: check every 15 minutes when awake.
  services.gitops-agent.interval = 900;
}
