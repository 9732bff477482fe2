# The security baseline every host must meet. The compliance page of the fleet site
# checks the same things from what hosts report (firewall, ssh password login, disk
# encryption, garbage collection, no nixos-upgrade timer).
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.fleet.security;
  luks = config.boot.initrd.luks.devices;
in
{
  options.fleet.security = {
    requireDiskEncryption = lib.mkOption {
      type = lib.types.bool;
      default = true;
      description = ''
        Refuse to build a host whose disks are not encrypted: at least one LUKS device
        must be declared in boot.initrd.luks.devices. Turn it off only together with a
        `disk-encryption` exemption (reason and expiry) in the host's host.yaml.
      '';
    };

    passwordManager = lib.mkOption {
      type = lib.types.nullOr lib.types.package;
      default = pkgs.keepassxc;
      defaultText = lib.literalExpression "pkgs.keepassxc";
      description = "The password manager installed for staff (null on hosts without users).";
    };
  };

  config = {
    assertions = [
      {
        assertion = !cfg.requireDiskEncryption || luks != { };
        message = ''
          ${config.networking.hostName}: no LUKS device is declared (boot.initrd.luks.devices),
          but the fleet requires disk encryption. Install the host with LUKS, or set
          fleet.security.requireDiskEncryption = false and add a disk-encryption exemption
          with a reason and an expiry to hosts/${config.networking.hostName}/host.yaml.
        '';
      }
    ];

    networking.firewall.enable = true;

    services.openssh = {
      enable = lib.mkDefault true;
      settings = {
        PasswordAuthentication = false;
        KbdInteractiveAuthentication = false;
        PermitRootLogin = "no";
      };
    };

    security.sudo.execWheelOnly = true;
    # Admins log in with keys and have no passwords: sudo asks their forwarded ssh agent.
    security.pam.sshAgentAuth.enable = true;
    security.pam.services.sudo.sshAgentAuth = true;

    nix.gc = {
      automatic = true;
      dates = "weekly";
      randomizedDelaySec = "1h";
      options = "--delete-older-than 30d";
    };
    nix.optimise.automatic = true;

    # Only the gitops agent changes the system.
    system.autoUpgrade.enable = false;

    boot.tmp.cleanOnBoot = true;
    services.fwupd.enable = lib.mkDefault true;

    environment.systemPackages = lib.optional (cfg.passwordManager != null) cfg.passwordManager;
  };
}
