# The nixpkgs attribute names (python3Packages.<name>) of the runtime dependencies that
# pyproject.toml lists, so the package follows pyproject.toml instead of repeating it:
# "pyyaml>=6" -> "pyyaml", "typing_extensions>=4.4" -> "typing-extensions".
# builtins only: tests evaluate it with nix-instantiate.
pyproject:
let
  upper = builtins.genList (i: builtins.substring i 1 "ABCDEFGHIJKLMNOPQRSTUVWXYZ") 26;
  lower = builtins.genList (i: builtins.substring i 1 "abcdefghijklmnopqrstuvwxyz") 26;
  # PEP 503 normalisation, which is also how nixpkgs names Python packages.
  normalise = name: builtins.replaceStrings ([ "_" "." ] ++ upper) ([ "-" "-" ] ++ lower) name;
  nameOf =
    spec:
    let
      found = builtins.match "[[:space:]]*([A-Za-z0-9][A-Za-z0-9._-]*).*" spec;
    in
    if found == null then throw "pyproject.toml: cannot read the dependency ${spec}" else builtins.head found;
in
map (spec: normalise (nameOf spec)) (pyproject.project.dependencies or [ ])
