"""Stand-in systems for the demo and the tests: real Nix derivations shaped like NixOS.

nixpkgs is not available offline, so a real NixOS toplevel cannot be built here. The
stand-in flake keeps the same shape the agent relies on —
``nixosConfigurations.<host>.config.system.build.toplevel`` with ``bin/switch-to-configuration``,
``nixos-version``, ``kernel``, ``initrd``, ``kernel-modules`` — built by Nix from the same
``hosts/``, ``profiles/`` and ``modules/`` layout, so changing a profile changes exactly the
systems of the hosts that use it. Activation updates ``<machine root>/run/current-system``
of a per-host directory instead of the real ``/run``.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable, Mapping
from pathlib import Path

FLAKE = r"""{
  description = "Stand-in fleet: real Nix derivations shaped like NixOS systems (nixpkgs is not available offline)";

  outputs = { self }:
    let
      machinesRoot = "@MACHINES_ROOT@";
      hostNames = builtins.attrNames (builtins.readDir ./hosts);
      load = path: import path;
      mkSystem = name:
        let
          host = load (./hosts + "/${name}/configuration.nix");
          parts = [ (load ./modules/default.nix) ] ++ map load (host.imports or [ ]) ++ [ host ];
          packages = builtins.concatLists (map (p: p.packages or [ ]) parts);
          setting = key: default: builtins.foldl' (acc: p: p.${key} or acc) default parts;
          kernel = setting "kernel" "6.6.1";
          version = setting "nixosVersion" "25.05.19700101.standin";
          switchFails = setting "switchFails" false;
          buildFails = setting "buildFails" false;
          unhealthy = setting "unhealthy" false;
          root = "${machinesRoot}/${name}";
          # Each package is a store path named after it ("nginx-1.26.1"), so the system's
          # closure holds them and nix store diff-closures sees versions come and go.
          # (Only names a store path may carry: tests put shell in a name to hang the build.)
          packagePaths = map (p: builtins.toFile p "${p}\n") (
            builtins.filter (p: builtins.match "[A-Za-z0-9+._?=-]+" p != null) packages
          );
          # Same kernel version, same store path: reboot-needed checks compare these links.
          kernelPackage = derivation {
            name = "linux-${kernel}";
            system = "@SYSTEM@";
            builder = "/bin/sh";
            args = [ "-c" "/bin/mkdir -p $out/lib/modules; echo ${kernel} > $out/bzImage; echo ${kernel} > $out/initrd" ];
          };
          switchScript = builtins.toFile "switch-to-configuration" ''
            #!/bin/sh
            # Stand-in for NixOS's switch-to-configuration: moves <machine root>/run/current-system.
            set -e
            action="$1"
            self="$(cd "$(/usr/bin/dirname "$0")/.." && pwd -P)"
            root="${root}"
            case "$action" in
              switch|test|boot|dry-activate) ;;
              *) echo "usage: switch-to-configuration switch|boot|test|dry-activate" >&2; exit 1 ;;
            esac
            /bin/mkdir -p "$root/run"
            echo "$action $self" >> "$root/activations.log"
            ${if switchFails then ''
              echo "warning: the following units failed: stand-in-broken.service" >&2
              exit 4
            '' else ""}
            if [ "$action" = switch ] || [ "$action" = test ]; then
              /bin/rm -f "$root/run/unhealthy"
              ${if unhealthy then ''/usr/bin/touch "$root/run/unhealthy"'' else ""}
              /bin/ln -sfn "$self" "$root/run/current-system.new"
              /bin/mv -T "$root/run/current-system.new" "$root/run/current-system"
              # The first activation stands for the machine's boot.
              [ -e "$root/run/booted-system" ] || /bin/ln -s "$self" "$root/run/booted-system"
            fi
          '';
          # Like NixOS's nixos-version: the revision is the flake's, i.e. the deploy commit.
          versionScript = builtins.toFile "nixos-version" ''
            #!/bin/sh
            case "$1" in
              --json)
                cat << EOF
            ${builtins.toJSON ({ nixosVersion = version; } // (if self ? rev then { configurationRevision = self.rev; } else { }))}
            EOF
                ;;
              *) echo "${version}" ;;
            esac
          '';
        in
        derivation {
          name = "nixos-system-${name}-${version}";
          system = "@SYSTEM@";
          builder = "/bin/sh";
          args = [ "-c" ''
            ${if buildFails then ''
              echo "error: builder for stand-in ${name} failed: a profile sets buildFails" >&2
              exit 1
            '' else ""}
            /bin/mkdir -p $out/bin $out/sw/bin
            /bin/cp ${switchScript} $out/bin/switch-to-configuration
            /bin/cp ${versionScript} $out/sw/bin/nixos-version
            /bin/chmod +x $out/sw/bin/nixos-version
            /bin/chmod +x $out/bin/switch-to-configuration
            echo -n "${version}" > $out/nixos-version
            /bin/ln -s ${kernelPackage}/bzImage $out/kernel
            /bin/ln -s ${kernelPackage}/initrd $out/initrd
            /bin/ln -s ${kernelPackage}/lib $out/kernel-modules
            echo "${builtins.concatStringsSep "\n" packages}" > $out/sw/packages
            echo "${builtins.concatStringsSep "\n" packagePaths}" > $out/sw/package-paths
          '' ];
        };
    in
    {
      nixosConfigurations = builtins.listToAttrs (map (name: {
        inherit name;
        value.config.system.build.toplevel = mkSystem name;
      }) hostNames);
    };
}
"""

MODULES = """# Stand-in for the fleet's shared modules (security baseline, backups, branding).
{
  packages = [ "security-baseline" "backup-agent" "branding" ];
}
"""


def profile_file(
    name: str, packages: Iterable[str] = (), settings: Mapping[str, str] | None = None
) -> str:
    items = " ".join(f'"{p}"' for p in [f"profile-{name}", *packages])
    lines = [f"  packages = [ {items} ];"]
    lines += [f"  {key} = {value};" for key, value in (settings or {}).items()]
    return f"# Stand-in for profile {name}.\n{{\n" + "\n".join(lines) + "\n}\n"


def host_configuration(profiles: Iterable[str], extra: Mapping[str, str] | None = None) -> str:
    imports = " ".join(f"../../profiles/{p}.nix" for p in profiles)
    lines = [f"  imports = [ {imports} ];"]
    lines += [f"  {key} = {value};" for key, value in (extra or {}).items()]
    return "# Stand-in host configuration.\n{\n" + "\n".join(lines) + "\n}\n"


def nix_system() -> str:
    machine = platform.machine()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine) + "-linux"


def flake(machines_root: Path) -> str:
    """The stand-in flake; activations go under ``machines_root/<host>/``."""
    return FLAKE.replace("@MACHINES_ROOT@", str(machines_root)).replace("@SYSTEM@", nix_system())
