# The nixos-gitops Python application, built from this repository's pyproject.toml.
#
# It runs `git` (fetches with protocol v2) and `nix` (builds), so both are put on its
# PATH; the agent module passes the system's own Nix (config.nix.package).
{
  lib,
  python3Packages,
  git,
  nix,
}:
let
  root = ./..;
  init = builtins.readFile (root + "/gitops/__init__.py");
  # `__version__ = "0.1.0"` in gitops/__init__.py, the same place hatch reads it from.
  version = builtins.head (builtins.match ''.*__version__ = "([^"]+)".*'' init);
in
python3Packages.buildPythonApplication {
  pname = "nixos-gitops";
  inherit version;
  pyproject = true; # format = "pyproject", spelled the current way

  # Only what the wheel is built from, so editing a host or a test does not rebuild
  # the agent; a deploy tree carries exactly these paths (fleet.yaml deploy.shared).
  src = lib.fileset.toSource {
    inherit root;
    fileset = lib.fileset.unions [
      (root + "/pyproject.toml")
      (root + "/README.md")
      (root + "/gitops")
      (root + "/site")
    ];
  };

  build-system = [ python3Packages.hatchling ];

  # pygit2, cryptography, pyyaml, jinja2, watchfiles, ...: read from pyproject.toml.
  dependencies = map (name: python3Packages.${name}) (
    import ./python-deps.nix (builtins.fromTOML (builtins.readFile (root + "/pyproject.toml")))
  );

  makeWrapperArgs = [
    "--prefix"
    "PATH"
    ":"
    (lib.makeBinPath [
      git
      nix
    ])
  ];

  # The test suite needs real nix, git servers and sshd; it runs in the project's CI,
  # not in the sandbox. The import check still catches a missing dependency.
  doCheck = false;
  pythonImportsCheck = [
    "gitops"
    "gitops.cli"
  ];

  meta = {
    description = "Git-native GitOps for fleets of NixOS machines: signed deploy branches, pull agents, signed reports, a static fleet dashboard";
    license = lib.licenses.mit;
    mainProgram = "gitops";
    platforms = lib.platforms.linux;
  };
}
