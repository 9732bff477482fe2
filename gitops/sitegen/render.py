"""HTML through Jinja2 templates in ``site/templates`` (autoescaped), with relative links so
the site works from any path of any web server, and from ``file://``."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup, escape

from gitops.fleet.model import Host, SiteSettings
from gitops.fleet.policies import Outcome, Policy
from gitops.protocol import format_time as protocol_time
from gitops.sitegen import resources
from gitops.sitegen.charts import STATE_COLORS
from gitops.sitegen.compliance import Answer, Exempt, Verdict
from gitops.sitegen.hardware import Hardware
from gitops.sitegen.model import CLOCK_SKEW, QUIET_FLAGS, DeployEntry, HostStatus, ReportEntry
from gitops.sitegen.states import describe_age

PAGES = (
    ("index.html", "Overview"),
    ("inventory.html", "Inventory"),
    ("drift.html", "Drift"),
    ("compliance.html", "Compliance"),
    ("audit.html", "Audit trail"),
    ("rollout.html", "Rollout"),
    ("software.html", "Software"),
    ("vulnerabilities.html", "Vulnerabilities"),
    ("commands.html", "Commands"),
)


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is UTC else moment.astimezone(UTC)


def format_time(moment: datetime | None) -> str:
    if moment is None:
        return "never"
    m = _utc(moment)
    return f"{m.year:04d}-{m.month:02d}-{m.day:02d} {m.hour:02d}:{m.minute:02d} UTC"


def iso(moment: datetime | None) -> str:
    return "" if moment is None else protocol_time(moment)


@functools.lru_cache(maxsize=4096)
def css_class(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in str(text).lower())


class Renderer:
    def __init__(
        self,
        settings: SiteSettings,
        now: datetime,
        docs_href: str,
        *,
        compiled: Path | None = None,
    ) -> None:
        """``compiled``: a directory where compiled templates are kept between builds."""
        self.settings = settings
        self.now = now
        self.docs_href = docs_href
        bytecode = None
        if compiled is not None:
            compiled.mkdir(parents=True, exist_ok=True)
            bytecode = jinja2.FileSystemBytecodeCache(str(compiled))
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(resources.templates_dir())),
            bytecode_cache=bytecode,
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(
            ts=format_time,
            iso=iso,
            ago=self.ago,
            short=lambda sha: (sha or "")[:8],
            commit_href=self.commit_href,
            pr_href=self.pr_href,
            css=css_class,
            when=when,
            commit=self.commit_link,
            pr=self.pr_link,
            state_badge=state_badge,
            flag_badge=flag_badge,
            trust_badge=trust_badge,
            host_link=host_link,
            host_links=host_links,
            report_timeline=self.report_timeline,
            answer_rows=self.answer_rows,
            fact_items=fact_items,
            deploy_items=self.deploy_items,
        )
        self.env.globals.update(
            site_title=settings.title,
            pages=PAGES,
            state_colors=STATE_COLORS,
            quiet_flags=QUIET_FLAGS,
            built=now,
            docs_href=docs_href,
        )

    def ago(self, moment: datetime | None) -> str:
        if moment is None:
            return "never"
        return describe_age((self.now - moment).total_seconds()) + " ago"

    def commit_href(self, sha: str | None) -> str:
        if not sha or not self.settings.commit_url:
            return ""
        return self.settings.commit_url.replace("{sha}", sha)

    def pr_href(self, number: int | None) -> str:
        if number is None or not self.settings.pull_request_url:
            return ""
        return self.settings.pull_request_url.replace("{number}", str(number))

    def commit_link(self, sha: str | None, label: str | None = None) -> Markup:
        if not sha:
            return Markup('<span class="none">none</span>')
        text = escape(label or sha[:8])
        href = self.commit_href(sha)
        if href:
            return Markup(f'<a class="sha" href="{escape(href)}">{text}</a>')
        return Markup(f'<code class="sha" title="{escape(sha)}">{text}</code>')

    def pr_link(self, number: int | None) -> Markup:
        if number is None:
            return Markup("")
        href = self.pr_href(number)
        if href:
            return Markup(f'<a href="{escape(href)}">#{number}</a>')
        return Markup(f"#{number}")

    def report_timeline(self, reports: Iterable[ReportEntry]) -> Markup:
        """The host page's report history, one ``<li>`` per report (the page's hot loop,
        written out in Python: a fleet renders this tens of thousands of times)."""
        items = []
        ahead = self.now + CLOCK_SKEW
        for r in reports:
            trust = str(r.trust)
            head = f"{when(r.when)} {trust_badge(trust, r.trust_detail)}"
            if r.result:
                what = f"<strong>{escape(r.result)}</strong>"
            else:
                what = f"<strong>invalid report</strong>: {escape(r.error)}"
            applied = f" applied {self.commit_link(r.deploy_applied)}" if r.deploy_applied else ""
            generation = f", generation {r.generation}" if r.generation is not None else ""
            reason = f' <span class="reason">{escape(r.reason)}</span>' if r.reason else ""
            note = ""
            if r.error:
                note = " <em>not counted: invalid</em>"
            elif not r.verified:
                note = f" <em>not counted: {escape(r.trust_detail)}</em>"
            elif r.when > ahead:
                note = " <em>not counted: dated ahead of this build</em>"
            items.append(
                f'<li class="result-{css_class(r.result or "invalid")} '
                f'trust-{css_class(trust)}">{head} {what}{applied}{generation}{reason} '
                f'<span class="commit">report {self.commit_link(r.oid)}</span>{note}</li>'
            )
        return Markup("\n".join(items))

    def answer_rows(
        self, answers: Iterable[Answer], policies: Mapping[str, Policy], root: str, verified: bool
    ) -> Markup:
        """The host page's policy table body: Yes/No/Unknown/Exempt and why."""
        rows = []
        for a in answers:
            if a.exemption is not None:
                note = f"exempt until {a.exemption.expires}: {escape(a.exemption.reason)}"
            elif a.expired_exemption is not None:
                note = (
                    f"exemption expired {a.expired_exemption.expires} "
                    f"({escape(a.expired_exemption.reason)})"
                )
            elif a.outcome is Outcome.FAIL:
                note = str(escape(policies[a.policy].resolution))
            elif a.outcome is Outcome.UNKNOWN and not verified:
                note = "no verified report"
            else:
                note = ""
            name = escape(a.policy)
            rows.append(
                f'<tr><td><a href="{root}compliance.html#policy-{css_class(a.policy)}">{name}</a>'
                f'</td><td><span class="answer answer-{css_class(a.outcome)}">'
                f"{_ANSWER_LABELS[a.outcome]}</span></td><td>{note}</td></tr>"
            )
        return Markup("\n".join(rows))

    def deploy_items(self, deploys: Iterable[DeployEntry], refused: str | None = None) -> Markup:
        """The deploy branch, newest first; ``refused``: a rewound head."""
        items = []
        for d in deploys:
            signer = f", signed by {escape(d.principal)}" if d.principal else ""
            expires = f", expires {escape(d.expires)}" if d.expires else ""
            mark = ""
            if d.oid == refused:
                mark = f" {flag_badge('deploy head rewound')} <em>refused: a rollback</em>"
            items.append(
                f"<li>{when(d.time)} {self.commit_link(d.oid)} "
                f"{trust_badge(d.trust, d.trust_detail)} {escape(d.subject)}{signer}{expires}"
                f"{mark}</li>"
            )
        return Markup("\n".join(items))

    def inventory_row(
        self,
        host: Host,
        status: HostStatus,
        failing: list[str],
        facts: Mapping[str, Any] | None = None,
    ) -> Markup:
        """One host's inventory row (cached per host: the same until its state changes).
        Each cell says which field it holds (``data-field``), for the filter; the state
        sorts by urgency, most urgent first. The hardware its counted report's ``facts``
        give is a last cell and the row's ``data-vendor``, ``data-model``,
        ``data-memory`` (GiB) and ``data-encryption``, which the filter reads too."""
        state = str(status.state)
        flags = "".join(" " + flag_badge(f) for f in status.flags)
        seen = status.last_seen
        cells = (
            ("host", "", host_link(host.name, "")),
            ("state", f' data-sort="{status.urgency}"', state_badge(state) + Markup(flags)),
            ("seen", f' data-sort="{iso(seen)}"', when(seen)),
            ("nixos", "", escape(status.nixos_version or "")),
            ("profile", "", escape(", ".join(host.profiles))),
            ("tag", "", escape(", ".join(host.tags))),
            ("owner", "", escape(host.owner)),
            ("applied", "", self.commit_link(status.applied)),
            ("published", "", self.commit_link(status.published)),
            ("policy", "", escape(", ".join(failing))),
            _hardware_cell(kit := Hardware.of(facts)),
        )
        attributes = "".join(
            f' data-{name}="{escape(value)}"'
            for name, value in (
                ("vendor", kit.vendor),
                ("model", kit.model),
                ("memory", kit.memory_gib),
                ("encryption", kit.encryption),
            )
        )
        return Markup(
            f"<tr{attributes}>"
            + "".join(f"<td{extra}>{content}</td>" for _, extra, content in cells)
            + "</tr>"
        )

    def render(self, template: str, *, root: str, current: str, **context: Any) -> str:
        docs = self.docs_href
        if docs and "://" not in docs and not docs.startswith("/"):
            docs = root + docs
        return self.env.get_template(template).render(
            root=root, current=current, docs=docs, **context
        )


def _hardware_cell(kit: Hardware) -> tuple[str, str, Markup]:
    """Vendor and model, memory, root disk encryption; sorted by memory."""
    machine = " ".join(v for v in (kit.vendor, kit.model) if v != "unknown") or "unknown"
    memory = human_size(kit.memory_bytes) if kit.memory_bytes is not None else "memory unknown"
    text = f"{machine}, {memory}, disk encryption {kit.encryption}"
    return ("hardware", f' data-sort="{kit.memory_bytes or 0}"', escape(text))


_ANSWER_LABELS: dict[Verdict, str] = {
    Outcome.PASS: "Yes",
    Outcome.FAIL: "No",
    Outcome.UNKNOWN: "Unknown",
    Exempt.EXEMPT: "Exempt",
}


def human_size(value: int | float) -> str:
    """Bytes as people read them: ``512 B``, ``1.5 KiB``, ``50.0 GiB``."""
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _scalar(key: str, value: object) -> str:
    """One fact value; numbers of bytes and seconds (by the key's suffix) made readable."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if key.endswith("_bytes"):
            return human_size(value)
        if key.endswith("_seconds"):
            return describe_age(value)
    return str(value)


def _fact_value(key: str, value: object) -> str:
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {_scalar(key, v)}" for k, v in sorted(value.items()))
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) or "none"
    return _scalar(key, value)


def fact_items(facts: Iterable[tuple[str, object]], system: Mapping[str, object]) -> Markup:
    """The host page's facts and system values as ``<dt>``/``<dd>`` pairs."""
    parts = [f"<dt>{escape(k)}</dt><dd>{escape(_fact_value(k, v))}</dd>" for k, v in facts]
    for key, value in sorted(system.items()):
        shown = "unknown" if value is None else str(value)
        parts.append(f"<dt>system.{escape(key)}</dt><dd>{escape(shown)}</dd>")
    return Markup("\n".join(parts))


# Filters that return HTML: plain functions, much cheaper than Jinja macros (a host page
# has hundreds of these and a fleet has thousands of host pages).

_TRUST_LABELS = {
    "verified": "✔ verified",
    "unverified": "✘ unverified",
    "unknown key": "? unknown key",
}


def when(moment: datetime | None) -> Markup:
    if moment is None:
        return Markup('<span class="none">never</span>')
    return Markup(f'<time datetime="{iso(moment)}">{format_time(moment)}</time>')


def state_badge(value: object) -> Markup:
    text = str(value)
    return Markup(f'<span class="badge state-{css_class(text)}">{escape(text)}</span>')


def flag_badge(value: object) -> Markup:
    text = str(value)
    return Markup(f'<span class="badge flag flag-{css_class(text)}">{escape(text)}</span>')


def trust_badge(value: object, detail: str = "") -> Markup:
    text = str(value)
    title = f' title="{escape(detail)}"' if detail else ""
    label = escape(_TRUST_LABELS.get(text, text))
    return Markup(f'<span class="trust trust-{css_class(text)}"{title}>{label}</span>')


def host_link(name: str, root: str) -> Markup:
    return Markup(f'<a href="{escape(root)}hosts/{escape(name)}.html">{escape(name)}</a>')


def host_links(names: Iterable[str], root: str) -> Markup:
    """Comma-separated links to host pages (thousands of them on the compliance page)."""
    prefix = f"{escape(root)}hosts/"
    return Markup(
        ", ".join(f'<a href="{prefix}{n}.html">{n}</a>' for n in (str(escape(x)) for x in names))
    )
