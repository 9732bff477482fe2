# Renders `services.gitops-agent` into the agent's configuration file.
#
# JSON is valid YAML, and the agent reads its file with yaml.safe_load, so this is
# exactly what gitops.agent.config.parse_config sees. The function uses builtins only
# (no nixpkgs), so tests/test_nixos_module.py evaluates it with nix-instantiate and feeds
# the result to parse_config: the module and the agent cannot drift apart unnoticed.
#
# `cfg` is the module's config, with trustedPublishersFile and knownHostsFile already
# resolved to files (the module turns the text options into store files first).
{ cfg }:
let
  storeDir = builtins.storeDir;

  # A private key or token: only its path goes into the configuration. A Nix path or a
  # string with store context would copy the secret into the world-readable Nix store.
  secretPath =
    name: value:
    if value == null then
      null
    else if builtins.isPath value then
      throw "services.gitops-agent.${name}: write the path as a string (\"/etc/...\"), not as a Nix path: a Nix path copies the secret into the world-readable Nix store"
    else if builtins.hasContext value || builtins.substring 0 (builtins.stringLength storeDir + 1) value == "${storeDir}/" then
      throw "services.gitops-agent.${name}: ${value} is in the Nix store, which every user can read; keep secrets outside it (e.g. /etc/ssh or /run/secrets)"
    else if builtins.substring 0 1 value != "/" then
      throw "services.gitops-agent.${name}: ${value} must be an absolute path"
    else
      value;

  # Public material (publisher keys, the git server's host keys): a Nix path is copied
  # into the store so that the file exists on the host that runs the agent.
  publicFile = value: if value == null then null else "${value}";

  withoutNulls = attrs: builtins.removeAttrs attrs (builtins.filter (name: attrs.${name} == null) (builtins.attrNames attrs));

  # `settings` wins over the typed options, merging nested attribute sets (health).
  merge =
    base: extra:
    base
    // builtins.mapAttrs (
      name: value:
      if builtins.isAttrs value && builtins.isAttrs (base.${name} or null) then merge base.${name} value else value
    ) extra;

  rendered = withoutNulls {
    host = cfg.hostName;
    remote = cfg.remote;
    trusted_publishers = publicFile cfg.trustedPublishersFile;
    trusted_commanders = publicFile (cfg.trustedCommandersFile or null);
    signing_key = secretPath "signingKey" cfg.signingKey;
    state_dir = cfg.stateDir;
    system_profile = cfg.systemProfile;
    action = cfg.action;
    poll_interval = cfg.interval;
    poll_jitter = cfg.randomizedDelaySec;
    report_interval = cfg.reportInterval;
    ssh_key = secretPath "sshKey" cfg.sshKey;
    known_hosts = publicFile cfg.knownHostsFile;
    http_token_file = secretPath "httpTokenFile" cfg.httpTokenFile;
    http_username = cfg.httpUsername;
    health = {
      failed_units = cfg.health.failedUnits;
      remote = cfg.health.remote;
      commands = cfg.health.commands;
      grace = cfg.health.grace;
      timeout = cfg.health.timeout;
      remote_grace = cfg.health.remoteGrace;
    };
    build_args = cfg.buildArgs;
    trust_on_first_use = cfg.trustOnFirstUse;
    min_commit = cfg.minCommit;
    max_age = cfg.maxAge;
    watch = cfg.watch;
    keep_generations = cfg.keepGenerations;
    build_retry_interval = cfg.buildRetryInterval;
    build_timeout = cfg.buildTimeout;
    activation_timeout = cfg.activationTimeout;
    metrics_file = cfg.metricsFile;
    secrets_dir = cfg.secretsDir;
    escrow = builtins.mapAttrs (name: secretPath "escrow.${name}") cfg.escrow;
    escrow_recipients = cfg.escrowRecipients;
    mode = cfg.mode;
    substituters = cfg.substituters;
    trusted_public_keys = cfg.trustedPublicKeys;
  };
in
builtins.toJSON (merge rendered (cfg.settings or { }))
