# A staff desktop: Plasma on Wayland, sound, printing, the office network printers.
{ pkgs, ... }:
{
  services.desktopManager.plasma6.enable = true;
  services.displayManager.sddm = {
    enable = true;
    wayland.enable = true;
  };

  networking.networkmanager.enable = true;
  services.pipewire = {
    enable = true;
    pulse.enable = true;
    alsa.enable = true;
  };
  hardware.bluetooth.enable = true;

  services.printing = {
    enable = true;
    drivers = [ pkgs.gutenprint ];
  };
  # Printers announce themselves on the office LAN.
  services.avahi = {
    enable = true;
    nssmdns4 = true;
  };

  programs.firefox.enable = true;
  fonts.packages = with pkgs; [
    noto-fonts
    liberation_ttf
    dejavu_fonts
  ];

  # Users' files go to the NAS nightly.
  fleet.backups.paths = [ "/home" ];
}
