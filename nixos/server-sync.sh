# Keep the gitops server directory in step with main. Run by nixos/server.nix as the git
# user, with gitops and git on PATH:
#
#   server-sync.sh setup   gitops-server-setup.service, at boot and on every change of
#                          the module's settings: create the directory the first time
#                          (gitops server init), install server.yaml, sync
#   server-sync.sh poll    gitops-server-sync.service, on a timer (main: mirror): sync
#                          when the forge's main moved, else nothing
#
#   GITOPS_SERVER_DIR         the server directory
#   GITOPS_SERVER_REPOSITORY  the fleet repository (with main: mirror, the forge's URL)
#   GITOPS_SERVER_CONFIG      server.yaml as the module renders it
#   GITOPS_SERVER_COMMAND     how sshd's forced commands and git's hooks run gitops
#   GITOPS_SERVER_MIRROR      1 when main is mirrored from the repository
#
# ssh settings for the forge reach git through GIT_SSH_COMMAND: no secret on a command line.
set -euo pipefail

dir=${GITOPS_SERVER_DIR:?}
repository=${GITOPS_SERVER_REPOSITORY:?}
mirror=${GITOPS_SERVER_MIRROR:-0}

case "${1:-}" in
  setup)
    config=${GITOPS_SERVER_CONFIG:?}
    if [ ! -d "$dir/fleet.git" ]; then
      flags=()
      [ "$mirror" = 1 ] && flags+=(--mirror)
      gitops server init --dir "$dir" --repo "$repository" \
        --command "${GITOPS_SERVER_COMMAND:?}" "${flags[@]}"
    fi
    # The module's settings win over what init (or an earlier generation) wrote.
    cp "$config" "$dir/.server.yaml.new"
    chmod 0644 "$dir/.server.yaml.new"
    mv -f "$dir/.server.yaml.new" "$dir/server.yaml"
    gitops server sync --dir "$dir"
    ;;
  poll)
    [ "$mirror" = 1 ] || exit 0 # main arrives by push; post-receive syncs
    there=$(git ls-remote --refs "$repository" refs/heads/main | cut -f1)
    here=$(git --git-dir "$dir/fleet.git" rev-parse --verify --quiet refs/heads/main || true)
    if [ -z "$there" ]; then
      echo "gitops-server: $repository has no main branch" >&2
      exit 1
    fi
    if [ "$there" != "$here" ]; then
      gitops server sync --dir "$dir"
    fi
    ;;
  *)
    echo "usage: server-sync.sh setup|poll" >&2
    exit 2
    ;;
esac
