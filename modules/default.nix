# What every host of this fleet gets. Roles come from profiles/<role>.nix, which each
# host imports by path (and lists in its host.yaml, so its deploy tree carries them).
{
  imports = [
    ./base.nix
    ./security.nix
    ./users.nix
    ./vpn.nix
    ./backups.nix
    ./branding.nix
    ./gitops.nix
  ];
}
