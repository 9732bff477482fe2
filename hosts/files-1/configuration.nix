# File server: SMB shares for projects, GIS and media. Also serves the fleet site.
{ ... }:
{
  imports = [
    ./hardware-configuration.nix
    ../../profiles/server.nix
    ../../profiles/fileserver.nix
  ];

  networking = {
    useDHCP = false;
    interfaces.eno1.ipv4.addresses = [
      {
        address = "10.20.0.10";
        prefixLength = 16;
      }
    ];
    defaultGateway = "10.20.0.1";
    nameservers = [ "10.20.0.53" ];
  };

  # The fleet site on the intranet: http://fleet.example.org (office LAN and VPN only).
  services.gitops-site = {
    enable = true;
    repository = "ssh://git@git.example.org/infra/fleet.git";
    # A read-only deploy key of the fleet repository, created on this host at enrolment.
    sshKey = "/var/lib/gitops-site/id_ed25519";
    knownHostsFile = ../../modules/git-server.known_hosts;
    nginx = {
      virtualHost = "fleet.example.org";
      listenAddress = "10.20.0.10";
      openFirewall = true;
      basicAuthFile = "/var/lib/secrets/fleet-site.htpasswd";
    };
  };

  system.stateVersion = "24.11";
}
