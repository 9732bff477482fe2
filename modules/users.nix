# The IT team: key-only logins on every host. Staff accounts are declared per host
# (hosts/<host>/configuration.nix); their passwords are set at enrolment with passwd.
{
  users.users.alice = {
    isNormalUser = true;
    description = "Alice Martin (IT)";
    extraGroups = [ "wheel" ];
    openssh.authorizedKeys.keys = [
      "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEjqHvLMT0Y8gMSkm+efO9z7toGtyD+6B5vPQfIie49B alice@example.org"
    ];
  };
}
