{
  description = "nixos-gitops: GitOps for fleets of NixOS machines, and an example fleet that uses it";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";

  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      eachSystem = f: builtins.listToAttrs (map (system: { name = system; value = f system; }) systems);

      # Every hosts/<name>/ with a configuration.nix. In a deploy tree (deploy/<name>)
      # only that host's directory exists, so only that host is defined.
      hostNames = import ./nixos/hosts.nix ./hosts;

      mkHost =
        name:
        nixpkgs.lib.nixosSystem {
          # The platform comes from each host's hardware-configuration.nix
          # (nixpkgs.hostPlatform), as nixos-generate-config writes it.
          modules = [
            self.nixosModules.agent
            self.nixosModules.site
            ./modules
            (./hosts + "/${name}/configuration.nix")
            {
              # The directory name is the host name the agent and the site use.
              networking.hostName = name;
              # The agent builds git+file://<mirror>?rev=<deploy commit>, so this is the
              # deploy commit; `nixos-version --json` and the reports show it.
              system.configurationRevision = self.rev or self.dirtyRev or null;
              nixpkgs.overlays = [ self.overlays.default ];
            }
          ];
        };
    in
    {
      overlays.default = final: _prev: {
        nixos-gitops = final.callPackage ./nixos/package.nix { };
      };

      packages = eachSystem (
        system:
        let
          nixos-gitops = nixpkgs.legacyPackages.${system}.callPackage ./nixos/package.nix { };
        in
        {
          inherit nixos-gitops;
          default = nixos-gitops;
        }
      );

      nixosModules = {
        agent = ./nixos/agent.nix;
        site = ./nixos/site.nix;
        server = ./nixos/server.nix;
        default = ./nixos/agent.nix;
      };

      nixosConfigurations = builtins.listToAttrs (
        map (name: {
          inherit name;
          value = mkHost name;
        }) hostNames
      );
    };
}
