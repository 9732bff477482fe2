# Fetch the fleet repository into a mirror, then rebuild the fleet site from it.
# Run by gitops-site.service (nixos/site.nix), which provides git and gitops on PATH.
#
#   GITOPS_SITE_STATE       state directory: mirror.git, www (served), .www.cache
#   GITOPS_SITE_REPOSITORY  URL of the fleet repository
#   GITOPS_SITE_HISTORY_HOSTS  hosts whose whole month one build reads (default 1000)
#
# ssh and credential settings reach git through its own environment
# (GIT_SSH_COMMAND, GIT_CONFIG_COUNT/KEY/VALUE), so no secret is on a command line.
set -euo pipefail

state=${GITOPS_SITE_STATE:?}
remote=${GITOPS_SITE_REPOSITORY:?}
mirror="$state/mirror.git"

# 1. Mirror main, every deploy/<host> and every reports/<host>, with a commit-graph of
#    what was fetched (the builder walks report history through it: docs/benchmarks.md).
if [ ! -d "$mirror" ]; then
  rm -rf "$mirror.new"
  git clone --quiet --mirror "$remote" "$mirror.new"
  git -C "$mirror.new" commit-graph write --reachable --split
  mv "$mirror.new" "$mirror"
else
  git -C "$mirror" remote set-url origin "$remote"
  git -C "$mirror" -c fetch.writeCommitGraph=true fetch --quiet --prune origin
fi

# 2. Build. `gitops site build` renders into a sibling directory and swaps it in with
#    one atomic rename: nginx serves the old site or the new one, never a mix. Its
#    incremental cache lives beside it ($state/.www.cache). Rebuild even without a new
#    commit: "last seen" and "stale" depend on the time of the build.
gitops site build --repo "$mirror" --out "$state/www" \
  --history-hosts "${GITOPS_SITE_HISTORY_HOSTS:-1000}"
