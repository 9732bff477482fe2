# Organisation-wide defaults: locale, boot loader, Nix settings.
{ lib, ... }:
{
  time.timeZone = lib.mkDefault "Europe/Berlin";
  i18n.defaultLocale = lib.mkDefault "en_GB.UTF-8";
  console.keyMap = lib.mkDefault "de";

  # UEFI machines; the Raspberry Pi kiosk switches to extlinux in its hardware file.
  boot.loader.systemd-boot.enable = lib.mkDefault true;
  boot.loader.systemd-boot.configurationLimit = lib.mkDefault 20;
  boot.loader.efi.canTouchEfiVariables = lib.mkDefault true;

  nix.settings = {
    experimental-features = [
      "nix-command"
      "flakes"
    ];
    # Only root (the gitops agent) builds systems; users still get nix-shell.
    trusted-users = [ "root" ];
  };

  # The flake pins nixpkgs; nothing here needs channels.
  nix.channel.enable = false;
}
