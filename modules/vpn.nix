# WireGuard client for the office network (10.20.0.0/16), for hosts that leave the
# building. The private key is generated on the host at first start and never leaves
# it; enrolment adds its public key to the VPN server (docs/enroll-host.md).
{ config, lib, pkgs, ... }:
let
  cfg = config.fleet.vpn;
in
{
  options.fleet.vpn = {
    enable = lib.mkEnableOption "the office WireGuard tunnel";
    address = lib.mkOption {
      type = lib.types.str;
      example = "10.20.8.23/32";
      description = "This host's address inside the tunnel.";
    };
    privateKeyFile = lib.mkOption {
      type = lib.types.strMatching "/.*";
      default = "/var/lib/wireguard/office.key";
      description = "The host's WireGuard private key (a string path: never in the store).";
    };
  };

  config = lib.mkIf cfg.enable {
    networking.wg-quick.interfaces.office = {
      address = [ cfg.address ];
      privateKeyFile = cfg.privateKeyFile;
      generatePrivateKeyFile = true;
      dns = [ "10.20.0.53" ];
      peers = [
        {
          publicKey = "VnxMhmJ5cSc0iWZTI5MrnL/11m/xuRBQam2hFeyL3AE=";
          endpoint = "vpn.example.org:51820";
          allowedIPs = [ "10.20.0.0/16" ];
          persistentKeepalive = 25;
        }
      ];
    };
    environment.systemPackages = [ pkgs.wireguard-tools ];
  };
}
