# Software developers: toolchains, containers, editors.
{ pkgs, ... }:
{
  virtualisation.podman = {
    enable = true;
    dockerCompat = true;
  };
  programs.direnv.enable = true;
  programs.git.enable = true;
  documentation.dev.enable = true;

  environment.systemPackages = with pkgs; [
    vscodium
    gcc
    gnumake
    python3
    nodejs
    go
    jq
    ripgrep
    kubectl
    nixfmt
  ];
}
