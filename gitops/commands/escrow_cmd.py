"""``gitops escrow show HOST``: decrypt a host's newest escrowed recovery material with an
admin key (docs/secrets.md#key-escrow)."""

from __future__ import annotations

import logging
from pathlib import Path

from gitops import output
from gitops.commands.secrets_cmd import default_identity
from gitops.errors import GitopsError
from gitops.fleet.model import load_fleet
from gitops.fleet.schema import Problems
from gitops.fleet.source import TreeSource
from gitops.protocol import MAIN_REF, branch_name, reports_ref
from gitops.report_commits import read_report_commit, walk_reports
from gitops.system import atomic
from gitops.trust import age, commits
from gitops.trust.sshsig import SignatureError

MAX_WALK = 10_000
log = logging.getLogger(__name__)


def show(
    repo_path: Path, host: str, name: str | None, identity_path: Path | None, out: Path | None
) -> int:
    repo = commits.open_repository(repo_path)
    main = commits.resolve_commit(repo, MAIN_REF)
    fleet = load_fleet(TreeSource(repo, main.tree, main.short_id), Problems())
    if host not in fleet.hosts:
        raise GitopsError(f"{host}: not a host in main's hosts/")
    trust = fleet.hosts[host].trust()
    branch = branch_name(reports_ref(host))
    head = commits.ref_target(repo, reports_ref(host)) or commits.ref_target(
        repo, f"refs/remotes/origin/{branch}"
    )
    if head is None:
        raise GitopsError(f"no {branch} here; git fetch origin {branch}:{branch}")
    skipped = 0
    for count, oid in enumerate(walk_reports(repo, head)):
        if count >= MAX_WALK:
            break
        found = read_report_commit(repo, oid).escrow
        if not found or (name is not None and name not in found):
            continue
        try:  # only what the host itself signed: anyone who can push may add a commit
            commits.verify_commit(repo, oid, trust)
        except SignatureError as err:
            skipped += 1
            log.warning(
                "%s: report %s carries escrow files but is not signed by %s's key (%s); "
                "skipped, looking further back",
                branch,
                str(oid)[:8],
                host,
                err,
            )
            continue
        chosen = name or sorted(found)[0]
        if name is None and len(found) > 1:
            raise GitopsError(f"{host} escrowed {', '.join(sorted(found))}; pass --name")
        identity = age.load_identity(identity_path or default_identity())
        plaintext = age.decrypt(found[chosen], identity, f"escrow/{chosen}.age of {host}")
        if out is not None:
            atomic.write_bytes(out, plaintext, mode=0o600)
            output.say(f"wrote {out} (0600): {chosen} of {host}, escrowed in report {str(oid)[:8]}")
        else:
            output.say(plaintext.decode("utf-8", "replace").rstrip("\n"))
        return 0
    if skipped:
        raise GitopsError(
            f"{branch}: no escrow file signed by {host}'s key ({skipped} unsigned or foreign "
            "report(s) skipped); run the agent with escrow set, or check who pushes to it"
        )
    what = f"escrow/{name}.age" if name else "no escrow/ file"
    raise GitopsError(f"{branch} holds {what}; is escrow set in its agent configuration?")
