# sshd's settings for the gitops server: the same as the snippet `gitops server sync`
# writes to <dir>/sshd_config (gitops/server/sync.py, SSHD_SNIPPET), which
# tests/test_nixos_server.py compares with this file. Builtins only.
#
# `settings` are global (services.openssh.settings); `matchBlock` applies to the git
# user only and goes at the end of sshd_config (services.openssh.extraConfig).
{
  user,
  authorizedKeysFile,
  maxStartups,
  loginGraceTime,
}:
{
  settings = {
    # At most this many connections authenticating at once (start:rate:full); agents
    # retry with jittered backoff. Stock sshd's 10:30:100 refuses a busy fleet at connect.
    MaxStartups = maxStartups;
    LoginGraceTime = loginGraceTime;
  };
  matchBlock = ''
    Match User ${user}
        AuthorizedKeysFile ${authorizedKeysFile}
        AuthenticationMethods publickey
        PasswordAuthentication no
        KbdInteractiveAuthentication no
        AcceptEnv GIT_PROTOCOL
        DisableForwarding yes
        PermitTTY no
        PermitUserRC no
        MaxSessions 1
  '';
}
