"""Campaigns as versioned records: the database holds every campaign's definition.

A version is immutable: the campaign's TOML text, the templates it uses (``{path: text}``,
relative to the templates folder: its channels' templates and whatever they include,
import or extend) and a SHA-256 digest of both.  :func:`apply` loads a campaigns folder,
adding a version only to a campaign whose digest changed, in one transaction; a file that
does not validate refuses the whole apply.  :func:`export` writes the current versions
back as files, so a git workflow keeps working: export, then apply, changes nothing.

Where campaigns come from (:func:`catalog`, :func:`load`), the one rule:

* Once ``loa campaigns apply`` has run, the database is the only source.  Planning, the
  scheduler, arrivals, validate, preview and reports read the stored current version (its
  TOML and its templates, rendered from the stored text), on every machine alike; an edited
  file changes nothing until it is applied.
* A deployment that has never applied follows its campaigns folder as before: every command
  that reads campaigns applies the folder implicitly first (a campaign whose file does not
  validate keeps its last version and is reported), so every run still records the version
  it was planned from.  Apply once to make the database the only source.

A run records the version it was planned from (``runs.campaign_version``).  Whether a
campaign needs four-eyes approval is the configuration's ``[approval]`` policy
(:func:`needs_approval`, and loa.approval for the actions).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import meta
from sqlalchemy import func, select, update
from sqlalchemy.engine import Connection, Engine

from loa import audit, db
from loa.campaign import Campaign, files, parse_text
from loa.config import ApprovalPolicy, Config
from loa.errors import CampaignError, LoaError, NotFound, Text
from loa.render import Renderer

C, V = db.campaigns, db.campaign_versions
SOURCE_KEY = "campaigns_source"      # loa_meta: "database" once `loa campaigns apply` has run
SOURCE_DATABASE = "database"
_APPLY_LOCK = 0x6C6F6135             # PostgreSQL: applies, implicit or not, one after the other
_CAMPAIGN_LOCK = 0x6C6F6136          # PostgreSQL, with the name's hash: one campaign's versions, one writer
EDITABLE = ("pending_approval", "approved", "active", "paused")   # a changed version sends these to draft
STARTING = ("draft", "pending_approval", "approved")              # without approval, applying makes these active


class StaleVersion(LoaError):
    """An action on a version that is no longer the campaign's current one (nothing changed)."""

    exit_code = 2
    http_status = 409


# -- reading a folder --------------------------------------------------------------------

@dataclass
class Draft:
    """A campaign file read for applying: its text, the campaign, the templates it uses."""

    file: str
    text: str
    campaign: Campaign
    templates: dict[str, str]
    digest: str


def digest_of(text: str, templates: Mapping[str, str]) -> str:
    body = json.dumps({"toml": text, "templates": dict(sorted(templates.items()))}, ensure_ascii=False,
                      sort_keys=True)
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def _read_template(folder: Path, name: str) -> str:
    path = folder / name
    try:
        if not path.resolve().is_relative_to(folder.resolve()):
            raise CampaignError([f"template {name!r}: outside the templates folder {folder}"])
        return path.read_text(encoding="utf-8-sig")   # a BOM must not become a U+FEFF sent to handsets
    except OSError as exc:
        raise CampaignError([f"template {name!r}: cannot read {path}: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        raise CampaignError([f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None


def _references(source: str, name: str, zalo: bool, folder: Path) -> tuple[set[str] | None, list[str]]:
    """The templates ``source`` includes, imports or extends; None when one is computed."""
    env = jinja2.Environment()
    sources = [source]
    if zalo:
        try:
            data = tomllib.loads(source).get("data", {})
        except tomllib.TOMLDecodeError as exc:
            return set(), [f"{folder / name}: not valid TOML: {exc}"]
        sources = [v for v in data.values() if isinstance(v, str)] if isinstance(data, dict) else []
    found: set[str] = set()
    for text in sources:
        try:
            refs = list(meta.find_referenced_templates(env.parse(text)))
        except jinja2.TemplateSyntaxError as exc:
            return set(), [f"{folder / name}:{exc.lineno}: template syntax error: {exc.message}"]
        if any(r is None for r in refs):
            return None, []
        found |= {r for r in refs if r is not None}
    return found, []


def templates_for(campaign: Campaign, folder: Path) -> tuple[dict[str, str], list[str]]:
    """The templates ``campaign`` uses, read from ``folder`` ({path: text}), and the problems.

    Its channels' templates and, transitively, what they include; a template that includes
    one by a computed name takes every template of the folder along."""
    out: dict[str, str] = {}
    problems: list[str] = []
    todo = [(spec.template, spec.channel == "zalo") for spec in campaign.channels]
    everything = False
    while todo:
        name, zalo = todo.pop()
        if name in out:
            continue
        try:
            out[name] = _read_template(folder, name)
        except CampaignError as exc:
            problems += [f"{campaign.path}: {'zalo' if zalo else 'sms'}.template: {p}" if name in
                         (s.template for s in campaign.channels) else f"{campaign.path}: {p}" for p in exc.problems]
            continue
        refs, errs = _references(out[name], name, zalo, folder)
        problems += [f"{campaign.path}: {e}" for e in errs]
        if refs is None:
            everything = True
        else:
            todo += [(r, False) for r in sorted(refs)]
    if everything and folder.is_dir():
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder).as_posix()
            if path.is_file() and rel not in out and not any(part.startswith(".") for part in path.parts):
                try:
                    out[rel] = path.read_text(encoding="utf-8-sig")
                except (OSError, UnicodeDecodeError):
                    continue
    return out, problems


def read_folder(folder: Path, templates: Path) -> tuple[list[Draft], list[str], list[str]]:
    """Every campaign file of ``folder`` that parses, with its templates; the files' problems;
    and the problems of their templates (missing, unreadable, broken)."""
    drafts: list[Draft] = []
    problems: list[str] = []
    template_problems: list[str] = []
    seen: dict[str, Path] = {}
    for path in files(folder):
        try:
            text = path.read_text(encoding="utf-8-sig")
        except OSError as exc:
            problems.append(f"{path}: cannot read: {exc.strerror}")
            continue
        except UnicodeDecodeError as exc:
            problems.append(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})")
            continue
        campaign, errs = parse_text(text, path)
        problems += errs
        if campaign is None:
            continue
        if campaign.name in seen:
            problems.append(f"{path}: name: {campaign.name!r} is also defined in {seen[campaign.name]}")
            continue
        seen[campaign.name] = path
        used, errs = templates_for(campaign, templates)
        template_problems += errs
        drafts.append(Draft(path.name, text, campaign, used, digest_of(text, used)))
    return drafts, problems, template_problems


def _validation_problems(config: Config, draft: Draft) -> list[str]:
    """What ``loa campaigns validate`` finds in the campaign statically (templates, variables,
    gateways, Decree 91 framing), checked against the templates it is applied with."""
    from loa.checks import campaign_problems

    return campaign_problems(config, draft.campaign, None, Renderer(config.templates_dir, draft.templates))


# -- the approval policy -------------------------------------------------------------------

def audience_size(conn: Connection, config: Config, campaign: Campaign) -> int | None:
    """How many people the campaign would reach now; None when its segment cannot be resolved."""
    from loa.plan import audience_select

    try:
        audience = audience_select(conn, config, campaign, db.utcnow()).subquery()   # resolves the areas
    except LoaError:
        return None
    return int(conn.scalar(select(func.count()).select_from(audience)) or 0)


def needs_approval(policy: ApprovalPolicy, campaign: Campaign, audience: int | None) -> str | None:
    """Why the campaign needs four-eyes approval under ``policy`` ([approval]), or None."""
    if policy.always:
        return "[approval] always = true"
    if policy.advertising and campaign.advertising:
        return "it is advertising ([approval] advertising = true)"
    if policy.above_recipients is not None:
        if audience is None:
            return "its audience cannot be counted yet ([approval] above_recipients)"
        if audience > policy.above_recipients:
            return f"its audience of {audience:,} is above [approval] above_recipients = {policy.above_recipients:,}"
    return None


def audience_gap(conn: Connection, config: Config, campaign: Campaign, row: Any) -> str | None:
    """Why ``campaign`` (its campaigns ``row``) needs an approval it has not got, by the
    ``[approval] above_recipients`` rule checked against its audience now; None if it need not.

    An approval covers the rule only if it was given for an audience above the threshold
    (``approved_audience``): a campaign that became active without approval, or was approved
    while below the threshold, needs approval once its audience grows above it."""
    limit = config.approval.above_recipients
    if limit is None:
        return None
    audience = audience_size(conn, config, campaign)
    if audience is None or audience <= limit:   # None: its segment does not resolve, which planning reports
        return None
    given = row.approved_audience if row.approved_version is not None else None
    if given is not None and given > limit:
        return None
    since = (f"it was approved for {given:,}" if given is not None else
             "it was approved without its audience counted" if row.approved_version is not None else
             "it was not approved")
    return (f"its audience of {audience:,} is above [approval] above_recipients = {limit:,}, and {since}")


def back_to_draft(conn: Connection, row: Any, who: str, why: str, doing: str) -> str:
    """Send campaign ``row`` back to draft because it needs approval (``why``), audited in the
    caller's transaction; the one-line refusal of ``doing`` (what was refused) to raise after commit."""
    now = db.utcnow()
    reason = f"needs approval: {why}"
    conn.execute(update(C).where(C.c.id == row.id).values(
        state="draft", state_by=who[:100], state_at=now, state_reason=reason, updated_at=now,
        submitted_version=None, approved_version=None, approved_audience=None))
    audit.record(conn, who, "campaigns.needs_approval", "campaign", row.name,
                 before={"state": row.state, "approved_version": row.approved_version,
                         "approved_audience": row.approved_audience},
                 after={"state": "draft", "approved_version": None}, reason=reason)
    return (f"campaign {row.name}: {why}: {doing}; it is back in draft "
            f"(`loa campaigns submit {row.name}`, then approval by a second user)")


def _approval_reason(conn: Connection, config: Config, campaign: Campaign) -> str | None:
    policy = config.approval
    audience = audience_size(conn, config, campaign) if policy.above_recipients is not None else None
    return needs_approval(policy, campaign, audience)


# -- applying ------------------------------------------------------------------------------

@dataclass
class Applied:
    name: str
    version: int
    added: bool                 # False: the digest was the current version's, nothing added
    before: str | None          # the campaign's state before (None: a new campaign)
    after: str
    approval: str | None = None  # why it needs approval, if it does


@dataclass
class ApplyResult:
    campaigns: list[Applied] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)   # an implicit apply's skipped files

    @property
    def added(self) -> list[Applied]:
        return [a for a in self.campaigns if a.added]


def _lock(conn: Connection) -> None:
    """Applies one after the other (PostgreSQL; SQLite's one writer does it at BEGIN IMMEDIATE):
    taken after :func:`_lock_campaigns`, never held while planning."""
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(_APPLY_LOCK)))


def _lock_campaigns(conn: Connection, names: Iterable[str]) -> None:
    """Lock the versions of campaigns ``names`` until the transaction ends (PostgreSQL).

    Whoever adds a version (an apply, a plan of a definition) holds its campaign's lock, so
    the campaign's current version read under it stays current, and a new campaign is
    inserted once.  Per campaign: planning a definition holds it for the whole plan, and
    must not hold up another campaign's plan or apply.  Taken in name order, always before
    :func:`_lock` and the campaigns' rows, so two transactions never wait for each other."""
    if conn.dialect.name == "postgresql":
        for name in sorted(set(names)):
            conn.execute(select(func.pg_advisory_xact_lock(_CAMPAIGN_LOCK, func.hashtext(name))))


def _current(conn: Connection, name: str) -> Any:
    """(id, name, state, version, digest) of campaign ``name``'s current version, or None."""
    return conn.execute(select(C.c.id, C.c.name, C.c.state, V.c.version, V.c.digest).join(
        V, (V.c.campaign_id == C.c.id) & (V.c.version == C.c.current_version)).where(C.c.name == name)).first()


def _store(conn: Connection, config: Config, draft: Draft, who: str, reason: str) -> Applied:
    """Add ``draft`` as the campaign's next version if its digest changed; audited.  Under
    the campaign's lock (:func:`_lock_campaigns`): an unchanged campaign's row is not locked,
    so a campaign being planned does not hold up an apply that leaves it as it is."""
    now = db.utcnow()
    campaign = draft.campaign
    same = _current(conn, campaign.name)
    if same is not None and same.digest == draft.digest:
        return Applied(campaign.name, same.version, False, same.state, same.state)
    query = select(C).where(C.c.name == campaign.name)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = conn.execute(query).first()
    current = None
    if row is not None and row.current_version is not None:
        current = conn.execute(select(V.c.version, V.c.digest)
                               .where(V.c.campaign_id == row.id, V.c.version == row.current_version)).first()
    approval = _approval_reason(conn, config, campaign)
    if row is None:
        state = "draft" if approval else "active"
        campaign_id = conn.execute(C.insert().values(
            name=campaign.name, description=campaign.description, advertising=campaign.advertising,
            created_at=now, updated_at=now, state=state, state_by=who, state_at=now,
            state_reason=f"version 1 applied; needs approval: {approval}" if approval else "version 1 applied",
        ).returning(C.c.id)).scalar_one()
        before, version = None, 1
    else:
        campaign_id, before = row.id, row.state
        version = int(conn.scalar(select(func.coalesce(func.max(V.c.version), 0))
                                  .where(V.c.campaign_id == campaign_id)) or 0) + 1
        state = before
        values: dict[str, Any] = {}
        if approval and before in EDITABLE:
            state = "draft"       # edit: the approved (or pending, or running) campaign needs approval again
            values = {"approved_version": None, "approved_audience": None}
        elif not approval:
            values = {"approved_version": None, "approved_audience": None}
            if before in STARTING:
                state = "active"
        moved = state != before
        conn.execute(update(C).where(C.c.id == campaign_id).values(
            description=campaign.description, advertising=campaign.advertising, updated_at=now, **values,
            **({"state": state, "state_by": who, "state_at": now,
                "state_reason": f"version {version} applied" + (f"; needs approval: {approval}" if approval else "")}
               if moved else {})))
    conn.execute(V.insert().values(campaign_id=campaign_id, version=version, file=draft.file, toml=draft.text,
                                   templates=draft.templates, digest=draft.digest, created_at=now,
                                   created_by=who[:100]))
    conn.execute(update(C).where(C.c.id == campaign_id).values(current_version=version))
    audit.record(conn, who, "campaigns.apply", "campaign", campaign.name,
                 before=None if row is None else {"version": current.version if current else None, "state": before},
                 after={"version": version, "digest": draft.digest, "file": draft.file, "state": state,
                        "templates": sorted(draft.templates), **({"approval": approval} if approval else {})},
                 reason=reason)
    return Applied(campaign.name, version, True, before, state, approval)


def is_database_source(conn: Connection) -> bool:
    """Whether ``loa campaigns apply`` has run: the database is then the only source."""
    return conn.scalar(select(db.meta.c.value).where(db.meta.c.key == SOURCE_KEY)) == SOURCE_DATABASE


def apply(engine: Engine, config: Config, who: str, *, folder: Path | None = None, templates: Path | None = None,
          reason: str = "", implicit: bool = False) -> ApplyResult:
    """Load the campaigns of ``folder`` (default: the configured one, templates from the configured
    templates folder) as versions, in one transaction.

    Explicit (``implicit`` False): every file must validate, or nothing is applied
    (:class:`CampaignError` naming each file and key); the database becomes the only source of
    campaigns.  Implicit (a deployment that follows its folder): files that do not parse are
    skipped and returned as problems."""
    folder = folder or config.campaigns_dir
    templates = templates or config.templates_dir
    drafts, problems, template_problems = read_folder(folder, templates)
    if not implicit:   # a template's own problems are validation's to report, when implicit
        problems += template_problems
        for draft in drafts:
            problems += _validation_problems(config, draft)
        if problems:
            raise CampaignError(list(dict.fromkeys(problems)))
    result = ApplyResult(problems=problems)
    if implicit:   # read first: a folder that did not change takes no write lock (it is read often)
        with engine.connect() as conn:
            if is_database_source(conn):
                return result
            now = {r.name: r for r in conn.execute(select(C.c.name, C.c.state, V.c.version, V.c.digest).join(
                V, (V.c.campaign_id == C.c.id) & (V.c.version == C.c.current_version))
                .where(C.c.name.in_([d.campaign.name for d in drafts])))} if drafts else {}
        if all(d.campaign.name in now and now[d.campaign.name].digest == d.digest for d in drafts):
            result.campaigns = [Applied(d.campaign.name, now[d.campaign.name].version, False,
                                        now[d.campaign.name].state, now[d.campaign.name].state) for d in drafts]
            return result
    with engine.begin() as conn:
        # Only the campaigns this apply changes are locked, theirs first, then their rows, then
        # the apply lock: a campaign being planned holds up only the applies that change it.
        before = {d.campaign.name: _current(conn, d.campaign.name) for d in drafts}
        changed = [d.campaign.name for d in drafts
                   if (c := before[d.campaign.name]) is None or c.digest != d.digest]
        _lock_campaigns(conn, changed)
        if changed and conn.dialect.name == "postgresql":
            conn.execute(select(C.c.id).where(C.c.name.in_(changed)).order_by(C.c.name).with_for_update())
        _lock(conn)
        if implicit and is_database_source(conn):   # applied meanwhile: the database rules now
            return result
        for draft in drafts:
            if (same := before[draft.campaign.name]) is not None and draft.campaign.name not in changed:
                result.campaigns.append(Applied(same.name, same.version, False, same.state, same.state))
            else:   # compared again under the lock: another apply may have added this content meanwhile
                result.campaigns.append(_store(conn, config, draft, who, reason))
        if not implicit:
            stmt = db.insert_for(conn, db.meta).values(key=SOURCE_KEY, value=SOURCE_DATABASE)
            conn.execute(stmt.on_conflict_do_update(index_elements=["key"], set_={"value": SOURCE_DATABASE}))
    return result


def record_definition(conn: Connection, config: Config, campaign: Campaign, who: str) -> Campaign:
    """A campaign given as a parsed file (``version`` None), as its stored version: the file's
    text and its templates are added as a version if they changed (a caller that plans a
    definition applies it).  In the caller's transaction, which holds the campaign's lock
    (:func:`_lock_campaigns`) until it ends, and not the apply lock: a plan's transaction
    lasts as long as its insert, and holds up only plans and applies of this campaign."""
    try:
        text = campaign.path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError):
        text = None
    if text is None or parse_text(text, campaign.path)[0] != campaign:
        text = _toml_of(campaign)    # built in code, or its file changed since: store what is planned
    used, _ = templates_for(campaign, config.templates_dir)
    _lock_campaigns(conn, [campaign.name])
    applied = _store(conn, config, Draft(campaign.path.name, text, campaign, used, digest_of(text, used)), who,
                     "planned from its definition")
    return dataclasses.replace(campaign, version=applied.version, templates=used)


def _toml_of(campaign: Campaign) -> str:
    import tomli_w

    return tomli_w.dumps(campaign.raw)


# -- reading the stored campaigns ----------------------------------------------------------

@dataclass(frozen=True)
class Version:
    campaign: str
    version: int
    file: str
    toml: str
    templates: dict[str, str]
    digest: str
    created_at: datetime
    created_by: str


def _version_row(row: Any, name: str) -> Version:
    return Version(name, row.version, row.file, row.toml, dict(row.templates or {}), row.digest, row.created_at,
                   row.created_by)


def stored(conn: Connection, name: str, version: int | None = None) -> Version | None:
    """Version ``version`` of campaign ``name`` (default: its current one), or None."""
    row = conn.execute(select(C.c.id, C.c.current_version).where(C.c.name == name)).first()
    if row is None:
        return None
    number = version if version is not None else row.current_version
    if number is None:
        return None
    found = conn.execute(select(V).where(V.c.campaign_id == row.id, V.c.version == number)).first()
    return _version_row(found, name) if found is not None else None


def versions_of(engine: Engine, name: str) -> list[Version]:
    with engine.connect() as conn:
        campaign_id = conn.scalar(select(C.c.id).where(C.c.name == name))
        if campaign_id is None:
            raise NotFound(Text("no campaign named {name!r} in the database", name=name))
        rows = conn.execute(select(V).where(V.c.campaign_id == campaign_id).order_by(V.c.version)).all()
    return [_version_row(r, name) for r in rows]


def campaign_of(config: Config, version: Version) -> Campaign:
    """The campaign a stored version defines, with its templates."""
    campaign, problems = parse_text(version.toml, config.campaigns_dir / version.file)
    if campaign is None:    # validated when applied: only a newer loa's keys could do this
        raise CampaignError([f"version {version.version} of campaign {version.campaign}: {p}" for p in problems])
    return dataclasses.replace(campaign, version=version.version, templates=version.templates)


def _stored_all(conn: Connection, config: Config, names: Iterable[str] | None = None
                ) -> tuple[dict[str, Campaign], list[str]]:
    query = (select(C.c.name, V).join(V, (V.c.campaign_id == C.c.id) & (V.c.version == C.c.current_version))
             .order_by(C.c.name))
    found: dict[str, Campaign] = {}
    problems: list[str] = []
    wanted = set(names) if names is not None else None
    for row in conn.execute(query):
        if wanted is not None and row.name not in wanted:
            continue
        try:
            found[row.name] = campaign_of(config, _version_row(row, row.name))
        except CampaignError as exc:
            problems += exc.problems
    return found, problems


def _follow_folder(engine: Engine, config: Config) -> tuple[bool, list[str], list[str]]:
    """For a deployment that has never applied: apply its folder implicitly.  (following, the
    names in the folder, the folder's problems)."""
    with engine.connect() as conn:
        if is_database_source(conn):
            return False, [], []
    if not config.campaigns_dir.is_dir():
        return True, [], []
    result = apply(engine, config, audit.cli_actor(), reason="implicit: the deployment follows its campaigns folder",
                   implicit=True)
    return True, [a.name for a in result.campaigns], result.problems


def catalog(engine: Engine, config: Config) -> tuple[dict[str, Campaign], list[str]]:
    """Every campaign's current version, and the problems found (see the module's rule)."""
    following, names, problems = _follow_folder(engine, config)
    with engine.connect() as conn:
        found, more = _stored_all(conn, config, names if following else None)
    return found, problems + more


def load(engine: Engine, config: Config, name: str) -> Campaign:
    """Campaign ``name``'s current version; :class:`NotFound` if there is none."""
    with engine.connect() as conn:
        database = is_database_source(conn)
    if not database:
        from loa.campaign import load_one

        load_one(config.campaigns_dir, name)     # the file's own errors, as before any apply
        _follow_folder(engine, config)
    with engine.connect() as conn:
        version = stored(conn, name)
        if version is None:
            known = ", ".join(conn.scalars(select(C.c.name).where(C.c.current_version.is_not(None))
                                           .order_by(C.c.name))) or "none"
            raise NotFound(Text("no campaign named {name!r} in the database (applied: {known}); "
                                "`loa campaigns apply` loads {folder}", name=name, known=known,
                                folder=str(config.campaigns_dir)))
    return campaign_of(config, version)


def renderer_for(config: Config, campaign: Campaign) -> Renderer:
    """The renderer of a campaign's own templates: its stored version's, else the folder's."""
    return Renderer(config.templates_dir, campaign.templates)


# -- export and diff -----------------------------------------------------------------------

def export(engine: Engine, folder: Path, templates: Path) -> list[tuple[str, int, list[Path]]]:
    """Write every campaign's current version to ``folder`` (its TOML, under the file name it was
    applied from) and its templates under ``templates``; (name, version, files written)."""
    with engine.connect() as conn:
        rows = conn.execute(select(C.c.name, V).join(V, (V.c.campaign_id == C.c.id)
                                                     & (V.c.version == C.c.current_version)).order_by(C.c.name)).all()
    out = []
    for row in rows:
        written = []
        target = folder / row.file
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(row.toml, encoding="utf-8")
        written.append(target)
        for rel, text in sorted((row.templates or {}).items()):
            path = templates / rel
            if not path.resolve().is_relative_to(templates.resolve()):
                raise LoaError(f"campaign {row.name}: template path {rel!r} leaves {templates}: not exported")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            written.append(path)
        out.append((row.name, row.version, written))
    return out


def diff(engine: Engine, name: str, a: int | None = None, b: int | None = None) -> str:
    """A unified diff of the TOML and templates of versions ``a`` and ``b`` of campaign ``name``
    (default: the one before the current, and the current)."""
    with engine.connect() as conn:
        current = stored(conn, name)
        if current is None:
            raise NotFound(Text("no campaign named {name!r} in the database", name=name))
        if b is None:
            b = current.version
        if a is None:
            a = b - 1
        if a < 1:
            raise NotFound(Text("campaign {name} has only version {b}: nothing to compare it with", name=name, b=b))
        old, new = stored(conn, name, a), stored(conn, name, b)
    for number, version in ((a, old), (b, new)):
        if version is None:
            raise NotFound(Text("campaign {name} has no version {number} (current: {current})", name=name,
                                number=number, current=current.version))
    assert old is not None and new is not None
    lines: list[str] = []
    pairs = [(old.file, new.file, old.toml, new.toml)]
    for rel in sorted(set(old.templates) | set(new.templates)):
        pairs.append((f"templates/{rel}", f"templates/{rel}", old.templates.get(rel, ""), new.templates.get(rel, "")))
    for left, right, x, y in pairs:
        lines += difflib.unified_diff(x.splitlines(keepends=True), y.splitlines(keepends=True),
                                      fromfile=f"v{a}/{left}", tofile=f"v{b}/{right}")
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


__all__ = ["Applied", "ApplyResult", "Draft", "StaleVersion", "Version", "apply", "catalog", "diff", "export",
           "load", "needs_approval", "read_folder", "record_definition", "renderer_for", "stored", "versions_of"]
