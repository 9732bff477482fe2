"""Signatures and trust: SSHSIG, OpenSSH allowed-signers files, signed git commits, keys."""
