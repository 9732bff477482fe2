# Every host runs the nixos-gitops agent against this fleet's repository.
{ lib, ... }:
{
  services.gitops-agent = {
    enable = true;
    remote = "ssh://git@git.example.org/infra/fleet.git";
    # The same keys as `publishers` in fleet.yaml (tests/test_example_fleet.py checks).
    # Trust comes from the running system, never from the branch being verified; a new
    # publisher key arrives in a commit signed by a key already trusted.
    trustedPublishersFile = ./publishers.allowed_signers;
    knownHostsFile = ./git-server.known_hosts;
    # The host key signs the reports (it is `key` in host.yaml) and logs in to the git
    # server, where it is this host's deploy key, allowed to push reports/<host> only.
    sshKey = "/etc/ssh/ssh_host_ed25519_key";
  };

  # sshd creates the host key the agent signs with.
  services.openssh.enable = lib.mkDefault true;
}
