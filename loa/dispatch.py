"""Sending: drain due outbox rows through each message's gateway.

The life of a row::

    planned/deferred --claim--> claimed --mark--> sending --gateway--> sent | delivered
                                                               |--> deferred (retry later; a quota:
                                                               |    the gateway's whole queue waits)
                                                               |--> suppressed (the recipient opted out)
                                                               |--> failed (code, text)
                                                               |--> unknown (may have arrived)
                                                               '--> planned on the next channel

Rows are claimed under a lease.  Each row is marked ``sending`` in a committed
statement just before its own gateway call, never earlier, so a crash leaves
evidence of exactly the calls that may have gone out: on recovery, ``claimed``
rows (never sent) go back to ``planned``; ``sending`` rows go back only for a
gateway that deduplicates by our key, and otherwise become ``unknown`` — nobody
gets the same message twice because loa crashed, and at most one row per sender
thread is left ambiguous.  ``loa messages reconcile`` then asks each gateway that
keeps records what became of them.

The marks and the outcomes of the sender threads share their commits (a group
commit, :meth:`Dispatcher._mark`): a thread's last outcome is written in the same
transaction as its next mark, so the rows in ``sending`` are never more than the
threads, and a window costs about one commit per thread's turn, not one per message.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, case, func, literal, select, update
from sqlalchemy.engine import Connection, Engine

from loa import cost, db
from loa.config import Config
from loa.errors import LoaError
from loa import gateways as gateway_state
from loa import lifecycle
from loa.gateways import Gateway, GatewayPool
from loa.inbound import receive_inbound
from loa.logs import mask_phones
from loa.phones import mask
from loa.policy import CAP_REASON, WINDOW_REASON, Policy, channel_window, opt_out, parse_window, window_reason
from loa.receipts import RECEIVABLE, apply_receipts, apply_responses, lock_rows
from loa.render import Renderer
from providers.base import Provider as ProviderBase
from providers.base import (
    AuthError,
    ConfigError,
    DeferredError,
    DeliveryReceipt,
    InboundMessage,
    MoneyError,
    NotReachableError,
    NotReceived,
    OptedOutError,
    OutgoingMessage,
    PermanentError,
    ProviderError,
    QuotaError,
    SendResult,
    ThrottledError,
)

log = logging.getLogger("loa.dispatch")
O = db.outbox
DUE = ("planned", "deferred")
RECEIPTED = ("delivered", "undelivered")
BACKOFF = (30, 300, 1800)          # seconds before attempts 2, 3, 4; then the message fails
MAX_ATTEMPTS = len(BACKOFF) + 1
PAUSING = (AuthError, ConfigError, MoneyError)


@dataclass
class SendSummary:
    outcomes: Counter[str] = field(default_factory=Counter)
    deferred: Counter[tuple[str, datetime]] = field(default_factory=Counter)   # (why, until) -> messages
    failed: Counter[str] = field(default_factory=Counter)    # why -> messages
    paused: dict[str, str] = field(default_factory=dict)     # gateway -> reason
    over_budget: dict[str, str] = field(default_factory=dict)   # campaign -> why it was paused
    receipts: int = 0
    responses: int = 0
    inbound: int = 0
    expired: int = 0
    missed_slots: int = 0    # rate-limit slots a sender woke too late for: booked again, not sent late

    @property
    def attempted(self) -> int:
        return sum(self.outcomes.values())


@dataclass(eq=False)   # hashable by identity: policy checks key on items
class _Item:
    id: int
    run_id: int
    subscriber_id: int
    channel: str
    gateway: str
    attempts: int
    definition: dict[str, Any]
    context: dict[str, Any]
    phone: str
    message: OutgoingMessage | None = None
    outcome: dict[str, Any] | None = None
    slot: float | None = None     # when its gateway's limiter booked it to leave (time.monotonic())
    missed: bool = False          # woken too late for that slot: not sent, to be booked again
    opted_out: str | None = None  # the gateway's code for "the recipient refused": recorded with the outcome
    marked: bool = False          # marked ``sending`` (its attempt counted): the gateway may be called
    version: tuple[int, int] | None = None   # (campaign id, version) its run was planned from
    cost: int | None = None       # its price in VND, rendered (None: its gateway has no price)


class Dispatcher:
    def __init__(self, engine: Engine, config: Config, *, threads: int | None = None,
                 batch_size: int | None = None, lease_seconds: float | None = None,
                 campaign: str | None = None, pool: GatewayPool | None = None,
                 shared_limit: bool | None = None) -> None:
        self.engine = engine
        self.config = config
        self.threads = threads or int(config.send.get("threads", 8))
        self.batch_size = batch_size or int(config.send.get("batch_size", 500))
        self.lease = timedelta(seconds=lease_seconds or float(config.send.get("lease_seconds", 300)))
        self.campaign = campaign
        if shared_limit is None:   # several workers share one limit through the database
            shared_limit = config.send.get("limiter", "database") == "database"
        self.pool = pool or GatewayPool(config, engine, shared_limit=shared_limit)
        self.renderer = Renderer(config.templates_dir)   # for runs planned before campaigns had versions
        self._renderers: dict[tuple[int, int], Renderer] = {}
        # unique per dispatcher: two in one process must not take each other's claims for theirs
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.summary = SendSummary()
        self.policy = Policy.from_config(config)
        self.stop = threading.Event()
        self._rng = random.Random()
        self._next: list[_Item] = []    # a batch claimed ahead, while the last window was sending
        # the last window of the last batch, still sending while the next batch is prepared
        self._inflight: tuple[list[_Item], list[Any]] | None = None
        self._missed: list[_Item] = []   # what missed its slot in the window before: booked with the next
        self._polled = False            # receipts polled while the last window was sending
        # gateway -> (until, outcome) while its quota is used up: its messages wait, uncalled
        self._held: dict[str, tuple[datetime, dict[str, Any]]] = {}
        self._hold_lock = threading.Lock()
        # the senders' group commit (_mark): what waits for the next transaction
        self._ledger = threading.Condition()
        self._writing = False
        self._to_record: list[_Item] = []     # outcomes of finished sends
        self._to_unmark: list[_Item] = []     # marked, then not sent (a missed slot): back to claimed
        self._to_mark: list[_Item] = []       # about to be sent
        self._mark_answers: dict[int, bool | BaseException] = {}
        self._ledger_error: BaseException | None = None
        # runs found paused or cancelled when their messages were to be marked: the rest of
        # what this worker holds of them is not sent (the ledger has them back already)
        self._halted: set[int] = set()

    # -- the loops ------------------------------------------------------------
    def run_until_empty(self) -> SendSummary:
        """Send everything that is due now, then collect receipts (``loa send``)."""
        self.open_gateways_owing_receipts()
        with ThreadPoolExecutor(self.threads, thread_name_prefix="loa-send") as executor:
            self._executor = executor
            try:
                while not self.stop.is_set():
                    self.housekeeping()
                    items = self._take()
                    if not items:
                        break
                    self._process(items)
                    if not self._polled:   # polled while the batch's last window sent
                        self.poll()
                    self._polled = False
            finally:
                self._drain()
            self._give_back()
        self.finish_runs()
        self.poll(drain=not self.stop.is_set())
        return self.summary

    def run_forever(self, idle: float = 1.0, housekeeping_every: float = 5.0) -> SendSummary:
        """A long-lived worker (``loa worker``) until :attr:`stop` is set (SIGTERM).

        On stop, sends already handed to the gateway finish and are recorded; rows
        claimed but not yet sent go back for other workers.
        """
        last = 0.0
        self.open_gateways_owing_receipts()
        with ThreadPoolExecutor(self.threads, thread_name_prefix="loa-send") as executor:
            self._executor = executor
            try:
                while not self.stop.is_set():
                    if time.monotonic() - last >= housekeeping_every:
                        self.housekeeping()
                        self.finish_runs()
                        last = time.monotonic()
                    items = self._take()
                    if items:
                        self._process(items)
                    if not self._polled:   # polled while the batch's last window sent
                        self.poll()
                    self._polled = False
                    if not items:
                        self.stop.wait(idle)
            finally:
                self._drain()
            self._give_back()
        return self.summary

    def open_gateways_owing_receipts(self) -> None:
        """Open the gateways that still owe receipts for messages sent earlier, by this
        process or by one that died, so that polling asks them even when nothing is left
        to send through them (the gateway pool opens a gateway on first use)."""
        with self.engine.connect() as conn:
            names = conn.scalars(select(O.c.gateway).where(O.c.state.in_(RECEIVABLE), O.c.gateway.is_not(None))
                                 .distinct()).all()
        for name in names:
            try:
                self.pool.get(name)
            except LoaError as exc:   # gone from the configuration, or cannot start: its rows wait
                log.warning("gateway %s: not polled for receipts: %s", name, exc)

    def housekeeping(self) -> None:
        self.recover()
        self.expire()
        self.fallback_timeouts()
        self.reconcile()

    # -- claiming -------------------------------------------------------------
    def _take(self) -> list[_Item]:
        """The next batch: the one claimed while the last window was sending, or a new claim."""
        items, self._next = self._next, []
        items = [i for i in items if i.run_id not in self._halted]   # given back when their run halted
        return items or self.claim()

    def _give_back(self) -> None:
        """On stop: a batch claimed ahead goes back for other workers."""
        items, self._next = self._next, []
        if items:
            self._release(items)

    def _campaign_filter(self) -> Any:
        if self.campaign is None:
            return None
        r, c = db.runs, db.campaigns
        return O.c.run_id.in_(select(r.c.id).join(c, c.c.id == r.c.campaign_id).where(c.c.name == self.campaign))

    def claim(self) -> list[_Item]:
        now = db.utcnow()
        self._halted = set()   # what is claimed now is of runs that may send (checked again at each mark)
        with self.engine.begin() as conn:
            due = select(O.c.id).where(O.c.state.in_(DUE), O.c.due_at <= now,
                                       O.c.gateway.not_in(gateway_state.paused_names()),
                                       O.c.run_id.not_in(lifecycle.halted()))
            if self.summary.paused:
                due = due.where(O.c.gateway.not_in(list(self.summary.paused)))
            if held := self._held_gateways(now):
                due = due.where(O.c.gateway.not_in(held))
            if (flt := self._campaign_filter()) is not None:
                due = due.where(flt)
            due = due.order_by(O.c.due_at, O.c.id).limit(self.batch_size)
            if conn.dialect.name == "postgresql":
                due = due.with_for_update(skip_locked=True)
            claimed = conn.execute(
                update(O).where(O.c.id.in_(due.scalar_subquery()))
                .values(state="claimed", worker=self.worker, lease_until=now + self.lease, updated_at=now,
                        reserved_vnd=None)
                .returning(O.c.id)
            ).scalars().all()
            return self._load(conn, sorted(claimed)) if claimed else []

    def _load(self, conn: Connection, ids: list[int]) -> list[_Item]:
        s, a, r, c = db.subscribers, db.areas, db.runs, db.campaigns
        parent = a.alias("parent")
        rows = conn.execute(
            select(O.c.id, O.c.run_id, O.c.subscriber_id, O.c.channel, O.c.gateway, O.c.attempts,
                   r.c.definition, r.c.campaign_id, r.c.campaign_version, c.c.name.label("campaign"), c.c.description,
                   s.c.phone, s.c.name, s.c.language, s.c.carrier, s.c.attributes,
                   a.c.code, a.c.name.label("area_name"), a.c.level, a.c.population,
                   parent.c.code.label("p_code"), parent.c.name.label("p_name"), parent.c.level.label("p_level"),
                   parent.c.population.label("p_population"))
            .join(r, r.c.id == O.c.run_id).join(c, c.c.id == r.c.campaign_id)
            .join(s, s.c.id == O.c.subscriber_id)
            # the row's area: where the subscriber lived when planned, or where they arrived
            .outerjoin(a, a.c.id == func.coalesce(O.c.area_id, s.c.area_id))
            .outerjoin(parent, parent.c.id == a.c.parent_id)
            .where(O.c.id.in_(ids))
        ).mappings().all()
        return [
            _Item(row["id"], row["run_id"], row["subscriber_id"], row["channel"], row["gateway"],
                  row["attempts"], row["definition"], _context(row), row["phone"],
                  version=(row["campaign_id"], row["campaign_version"]) if row["campaign_version"] else None)
            for row in rows
        ]

    # -- one claimed batch ------------------------------------------------------
    def _process(self, items: list[_Item]) -> None:
        items = self._enforce_policy(items)
        ready = [item for item in items if self._prepare(item)]
        failed_early = [item for item in items if item.outcome is not None]
        if failed_early:
            self._record(failed_early)
        ready, stops = self._reserve(ready)
        try:
            self._send_windows(ready, carry=not stops)
        finally:
            # what fitted in the budget went out first; the campaign is paused once it has
            for stop in stops:
                if cost.pause_for_budget(self.engine, stop):
                    log.warning("campaign %s paused: %s", stop.campaign, stop.reason,
                                extra={"kind": "budget", "campaign": stop.campaign})
                self.summary.over_budget[stop.campaign] = stop.reason

    def _send_windows(self, ready: list[_Item], *, carry: bool = True) -> None:
        """Send the batch window by window, two windows in flight: the next window is
        booked and handed to the senders while the current one is still sending, so that
        neither the senders nor the limiter's slots wait for a window's last call, its
        commit and the next window's booking (the rate would drop at every window's end).

        A window is what the limiter books at once; each row is marked sending on its own
        turn.  With the batch's last window, the next batch is claimed and the gateways are
        polled for receipts while it sends (:meth:`_send_all`).

        The pipeline runs on across batches: when the next batch is claimed already, the
        batch's last window is left sending (:attr:`_inflight`) while the next batch is
        checked, rendered and booked, and its first window waits for it.  Whatever ends
        the batch otherwise (a stop, nothing claimed, an error, or not ``carry``) waits for
        the window first.
        """
        window = max(self.threads * 16, 64)
        inflight, self._inflight = self._inflight, None
        missed, self._missed = self._missed, []
        left_sending = False
        try:
            for start in range(0, len(ready), window):
                if self.stop.is_set():
                    self._release(missed + ready[start:])
                    missed = []
                    return
                # what missed its slot in the window before is booked again with this one: the
                # senders do not wait for it, and no slot goes by unbooked in the meantime
                candidates, missed = missed + ready[start:start + window], []
                held = [i for i in candidates if self._held_outcome(i)]
                if held:
                    self._record(held)
                chunk = [i for i in candidates
                         if i.outcome is None and i.gateway not in self.summary.paused
                         and i.run_id not in self._halted]
                skipped = [i for i in candidates
                           if i.outcome is None and i.gateway in self.summary.paused]
                if skipped:
                    self._release(skipped)
                if not chunk:
                    continue
                self._renew_lease()   # the window's rows are still ours: their lease runs from now
                futures = self._start(chunk, book=True)
                if start + window >= len(ready):
                    self._ahead()
                if inflight is not None:
                    missed = self._send_all(*inflight, rounds=1)
                inflight = (chunk, futures)
            left_sending = carry and bool(self._next) and not self.stop.is_set()
        finally:
            if left_sending:
                self._inflight, self._missed = inflight, missed
            else:
                self._finish(inflight, missed)

    def _finish(self, inflight: tuple[list[_Item], list[Any]] | None, missed: list[_Item]) -> None:
        """The end of the pipeline: wait for the last window, and send what missed its slot in
        the one before (on a stop, it goes back for other workers)."""
        if inflight is not None:
            self._send_all(*inflight)
        if missed and self.stop.is_set():
            self._release(missed)
        elif missed:
            self._send_all(missed, self._start(missed, book=True))

    def _drain(self) -> None:
        """Wait for the window left sending by the last batch (:meth:`_send_windows`)."""
        inflight, self._inflight = self._inflight, None
        missed, self._missed = self._missed, []
        self._finish(inflight, missed)

    def _start(self, chunk: list[_Item], *, book: bool) -> list[Any]:
        """Book the window's slots (``book``) and hand its messages to the senders."""
        if book:
            self._book(chunk)
        for item in chunk:
            item.missed = False
        return [self._executor.submit(self._send, item) for item in chunk]

    def _ahead(self) -> None:
        """While the batch's last window sends: claim the next batch, so that the senders
        wait for the gateway and not for the database between two batches, and poll the
        gateways for receipts (a receipt that overtakes its message's outcome is kept: see
        :func:`_update_for`).  Workers sharing a limit each get the same share of it, so they
        reach the end of their batches together: were they all claiming at once, nobody
        would be booking slots, and the slots would be lost."""
        if self.stop.is_set():
            return
        self._next = self.claim()
        self.poll()
        self._polled = True

    def _send_all(self, chunk: list[_Item], futures: list[Any], rounds: int = 3) -> list[_Item]:
        """Wait for a window handed to the senders, renewing this worker's lease while it
        lasts, and send again what missed its slot; with ``rounds=1``, return what missed
        its slot instead (booked again with the next window: :meth:`_send_windows`).

        A window held back by a slow gateway or a tight rate limit can outlast the lease;
        without the renewal, another worker's recover() would take a live worker's rows
        (back to planned, so sent twice, or to unknown, though nothing crashed).
        """
        todo = chunk
        for round_ in range(rounds):
            # a slot missed (a busy machine, a collector's pause) is booked again after the
            # window, not waited for in its thread while the next slots go by unserved; the
            # third time, the message books its own slots as it goes, until it makes one
            if round_:
                futures = self._start(todo, book=round_ < 2)
            beat = self.lease.total_seconds() / 3
            while wait(futures, timeout=beat).not_done:
                self._renew_lease()
            for f in futures:
                f.result()   # _send records its own failures; anything else is a bug to surface
            self._flush()    # the last outcomes of the round, and the marks of missed slots undone
            todo = [item for item in todo if item.missed]
            if halted := {i.run_id for i in todo if i.run_id in self._halted}:
                # a missed slot's mark was undone after its run's rows were given back (it was
                # still ``sending`` then): given back now, not left claimed until its lease ends
                self._give_back_halted(halted)
                todo = [item for item in todo if item.run_id not in halted]
            if not todo:
                break
        return todo

    def _book(self, chunk: list[_Item]) -> None:
        """Book the window's slots with each gateway's limiter at once, where it can
        (``book``: the shared limiter), rather than one message at a time."""
        by_gateway: dict[str, list[_Item]] = {}
        for item in chunk:
            by_gateway.setdefault(item.gateway, []).append(item)
        for name, items in by_gateway.items():
            try:
                book = getattr(self.pool.get(name).limiter, "book", None)
            except LoaError:
                continue        # _send records why the gateway cannot be built
            if book is not None:
                for item, slot in zip(items, book([i.message.parts if i.message else 1 for i in items]),
                                      strict=True):
                    item.slot = slot

    def _reserve(self, ready: list[_Item]) -> tuple[list[_Item], list[cost.BudgetStop]]:
        """Hold each message's price against its campaign's budget (:func:`loa.cost.reserve`):
        what fits, and the campaigns whose next message would go over (given back unsent)."""
        refused, stops = cost.reserve(self.engine, self.worker, ready)
        return ([i for i in ready if i.id not in refused] if refused else ready), stops

    def _renew_lease(self) -> None:
        now = db.utcnow()
        ours = and_(O.c.state.in_(("claimed", "sending")), O.c.worker == self.worker)
        with self.engine.begin() as conn:
            lock_rows(conn, ours)
            conn.execute(update(O).where(ours).values(lease_until=now + self.lease))

    def _enforce_policy(self, items: list[_Item]) -> list[_Item]:
        """Decree 91 just before sending: do-not-contact, the send window, the frequency cap.

        A message held back keeps its reason in the ledger and is never dropped:
        suppressed for a refusal, deferred (with the time) for a window or a cap.
        """
        now = db.utcnow()
        held: list[_Item] = []
        blocked = self.policy.blocked(self.engine, {i.subscriber_id: i.phone for i in items})
        for item in items:
            if item.subscriber_id in blocked:
                item.outcome = {"state": "suppressed", "reason": blocked[item.subscriber_id]}
                held.append(item)
                continue
            window = channel_window(item.channel, parse_window(item.definition.get("window")))
            if not window.contains(now, self.config.timezone):
                item.outcome = {"state": "deferred", "due_at": window.next_open(now, self.config.timezone),
                                "reason": window_reason(item.channel, window)}
                held.append(item)
        rest = [i for i in items if i.outcome is None]
        for item, until in self.policy.over_cap(self.engine, rest, now).items():
            item.outcome = {"state": "deferred", "due_at": until, "reason": CAP_REASON}
            held.append(item)
        if held:
            self._record(held)
        return [i for i in items if i.outcome is None]

    def renderer_for(self, version: tuple[int, int] | None) -> Renderer:
        """The templates of the campaign version a run was planned from, as stored (loa.versions)."""
        if version is None:
            return self.renderer
        found = self._renderers.get(version)
        if found is None:
            V = db.campaign_versions
            with self.engine.connect() as conn:
                templates = conn.scalar(select(V.c.templates).where(V.c.campaign_id == version[0],
                                                                    V.c.version == version[1]))
            found = self._renderers.setdefault(version, Renderer(self.config.templates_dir, templates or {}))
        return found

    def _prepare(self, item: _Item) -> bool:
        """Render the message; a template error fails this message only."""
        definition = item.definition
        renderer = self.renderer_for(item.version)
        spec = definition.get(item.channel, {})
        try:
            if definition.get("link"):
                from loa.links import url_for

                item.context["link"] = url_for(str(self.config.serve.get("public_url", "")), item.id)
            if item.channel == "sms":
                sms = renderer.render_sms(
                    spec["template"], item.context, unaccented=bool(spec.get("unaccented", False)),
                    max_parts=int(spec.get("max_parts", 6)),
                    advertising_opt_out=definition.get("opt_out", "") if definition.get("advertising") else None,
                )
                item.message = OutgoingMessage(
                    key=db.key_for(item.run_id, item.subscriber_id, "sms", definition), to=item.phone, channel="sms",
                    text=sms.text, encoding=sms.info.encoding, parts=sms.info.parts,
                    advertising=bool(definition.get("advertising", False)),
                )
                item.cost = self._price(item, sms.info.parts)
            else:
                payload = renderer.render_zalo(spec["template"], item.context)
                item.message = OutgoingMessage(
                    key=db.key_for(item.run_id, item.subscriber_id, item.channel, definition), to=item.phone,
                    channel=item.channel,
                    template_id=payload.template_id, template_data=payload.data,
                    advertising=bool(definition.get("advertising", False)),
                )
                item.cost = self._price(item, 1)
        except LoaError as exc:
            item.outcome = _failed("template", str(exc))
            return False
        return True

    def _price(self, item: _Item, parts: int) -> int | None:
        carrier = str(item.context.get("subscriber", {}).get("carrier") or "")
        return cost.price(self.config, item.gateway, item.channel, carrier, parts)

    # -- the senders' group commit -----------------------------------------------
    def _mark(self, item: _Item) -> bool:
        """Mark ``item`` sending, committed, before its gateway call; False if this worker
        lost the row's lease (another worker took it over: it must not be sent here).

        The threads of a window share their commits: whoever finds no transaction under
        way writes everything queued so far (finished outcomes, undone marks, marks), and
        the others wait for it.  A thread's outcome is queued before its next mark, so it
        is written no later than that mark: each thread has at most one row in
        ``sending`` in the ledger at any moment.
        """
        with self._ledger:
            self._to_mark.append(item)
            while item.id not in self._mark_answers:
                if self._writing:
                    self._ledger.wait()
                else:
                    self._write_queued()
            answer = self._mark_answers.pop(item.id)
        if isinstance(answer, BaseException):
            raise answer
        if answer:
            item.marked = True
            item.attempts += 1
        return answer

    def _done(self, item: _Item) -> None:
        """Queue a finished send's outcome for the next commit (a mark's, or :meth:`_flush`)."""
        with self._ledger:
            self._to_record.append(item)

    def _unmark(self, item: _Item) -> None:
        """A marked message that is not sent now (its slot missed): back to ``claimed``."""
        item.marked = False
        item.attempts -= 1
        with self._ledger:
            self._to_unmark.append(item)
            self.summary.missed_slots += 1

    def _flush(self) -> None:
        """Write what the senders queued; raise what a shared commit failed with."""
        with self._ledger:
            while self._writing:
                self._ledger.wait()
            if self._to_record or self._to_unmark or self._to_mark:
                self._write_queued()
            error, self._ledger_error = self._ledger_error, None
        if error is not None:
            raise error

    def _write_queued(self) -> None:
        """One transaction for everything queued; called holding ``self._ledger``, which is
        released while the database works."""
        record, unmark, mark = self._to_record, self._to_unmark, self._to_mark
        self._to_record, self._to_unmark, self._to_mark = [], [], []
        self._writing = True
        self._ledger.release()
        answers: dict[int, bool | BaseException] = {}
        try:
            marked = self._write(record, unmark, mark)
            answers = {item.id: item.id in marked for item in mark}
        except Exception as exc:  # noqa: BLE001 - every thread of this commit learns of it, and the window
            answers = {item.id: exc for item in mark}
            self._ledger_error = exc
        finally:
            self._ledger.acquire()
            self._writing = False
            self._mark_answers.update(answers)
            self._ledger.notify_all()

    def _write(self, record: list[_Item], unmark: list[_Item], mark: list[_Item]) -> set[int]:
        now = db.utcnow()
        ours = O.c.worker == self.worker
        with self.engine.begin() as conn:
            lock_rows(conn, O.c.id.in_([i.id for i in (*record, *unmark, *mark)]))
            refused = self._record_rows(conn, record, now) if record else []
            if unmark:
                conn.execute(update(O).where(O.c.id.in_([i.id for i in unmark]), O.c.state == "sending", ours)
                             .values(state="claimed", attempts=O.c.attempts - 1, updated_at=now,
                                     lease_until=now + self.lease))
            marked: set[int] = set()
            if mark:
                # the campaign's and the run's state are checked in the statement that marks
                # the message: a pause committed before it stops this send, on every worker
                marked = set(conn.execute(
                    update(O).where(O.c.id.in_([i.id for i in mark]), O.c.state == "claimed", ours,
                                    O.c.run_id.not_in(lifecycle.halted()))
                    .values(state="sending", attempts=O.c.attempts + 1, updated_at=now,
                            encoding=None, parts=None, lease_until=now + self.lease)
                    .returning(O.c.id)
                ).scalars())
        self._log_refused(refused)
        if len(marked) < len(mark):
            self._give_back_halted({i.run_id for i in mark if i.id not in marked})
        return marked   # rows whose lease we lost, or whose run was halted, are left alone

    def _give_back_halted(self, run_ids: set[int]) -> None:
        """Of runs whose message was refused its mark: those paused or cancelled meanwhile.
        Every row this worker holds of them goes back at once, planned with the pause as its
        reason (or cancelled), and the senders waiting for their turn skip them.  In a
        transaction of its own, its rows locked in id order, as every writer of the outbox
        locks them (:func:`lock_rows`): a cancel may be locking the same rows."""
        now = db.utcnow()
        with self.engine.begin() as conn:
            halted = lifecycle.halted_runs(conn, run_ids)
            if not halted:   # the lease was lost, not the run halted: nothing of ours to give back
                return
            mine = and_(O.c.run_id.in_(list(halted)), O.c.state == "claimed", O.c.worker == self.worker)
            lock_rows(conn, mine)
            given = {run_id: conn.execute(update(O).where(mine, O.c.run_id == run_id)
                                          .values(state=state, reason=reason, worker=None, lease_until=None,
                                                  updated_at=now)).rowcount
                     for run_id, (state, reason) in halted.items()}
        self._halted |= set(halted)
        for run_id, n in given.items():
            reason = halted[run_id][1]
            if n:
                log.warning("run %s halted (%s): %d message(s) given back unsent", run_id, reason, n,
                            extra={"kind": "halted"})

    def _send(self, item: _Item) -> None:
        """One message on a sender thread: marked sending just before its call, its outcome
        queued for the next shared commit."""
        try:
            self._send_one(item)
        finally:
            if item.outcome is not None and not item.missed:
                self._done(item)

    def _send_one(self, item: _Item) -> None:
        assert item.message is not None
        gw: Gateway | None = None
        if self._held_outcome(item):   # another thread of this window hit the quota
            return
        try:
            gw = self.pool.get(item.gateway)
            handed_over = self._wait_for_slot(item, gw)
            if handed_over is None:
                return
            result = gw.provider.send(item.message)
            item.outcome = _sent(result, item.message, handed_over)
            if (price := self._price(item, item.outcome["parts"] or 1)) is not None:
                item.outcome["cost_vnd"] = price   # the price now: a later change of price leaves it
        except ProviderError as exc:
            item.outcome = self._classify(item, gw, exc)
        except LoaError as exc:   # the gateway cannot even be built: a missing secret, a bad setting
            self._pause(item.gateway, str(exc))
            item.outcome = {"state": "planned", "attempts": item.attempts - item.marked, "error_code": "config",
                            "error_text": str(exc)[:500]}
        except Exception as exc:  # a bug in an adapter must not lose the row: treat as ambiguous
            log.exception("gateway %s raised unexpectedly for %s", item.gateway, mask(item.phone))
            item.outcome = {"state": "unknown", "error_code": "exception", "error_text": repr(exc)[:500]}

    #: seconds before its slot at which a message is marked sending: time for the commit
    MARK_AHEAD = 0.05

    def _wait_for_slot(self, item: _Item, gw: Gateway) -> datetime | None:
        """Wait for the message's turn with its gateway's limiter; the moment it is handed
        over, or None if it is not to be sent now (held meanwhile, or its slot missed).

        A limiter that books slots (``book``: the shared one) is asked again at the moment
        recorded as the handover: a sender preempted since it woke must not send late (the
        gateway would see a bunch).  A slot booked with the window that is missed goes back
        to be booked with the others (``item.missed``); one booked here is booked again.

        The message is marked ``sending`` (:meth:`_mark`) :attr:`MARK_AHEAD` before its turn,
        not when the window is booked: were the process killed while it waits, the row is
        still ``claimed``, and goes back to the queue.
        """
        assert item.message is not None
        limiter, parts = gw.limiter, item.message.parts
        booked, item.slot = item.slot, None
        if item.run_id in self._halted:   # paused or cancelled while it waited: given back already
            return None
        book = getattr(limiter, "book", None)
        if book is None:            # an in-process limiter: its turn comes, nothing to miss
            if not hasattr(limiter, "sleep_until"):
                limiter.acquire(parts)
                return None if self._held_outcome(item) or not self._mark(item) else db.utcnow()
            # marked just ahead of its turn, as below for a booked slot
            turn = limiter.now() + limiter.reserve(parts)   # type: ignore[attr-defined]
            limiter.sleep_until(turn - self.MARK_AHEAD)     # type: ignore[attr-defined]
            if self._held_outcome(item) or not self._mark(item):
                return None
            limiter.sleep_until(turn)   # type: ignore[attr-defined]
            return None if self._held_outcome(item) else db.utcnow()
        while True:
            slot = booked if booked is not None else book([parts])[0]
            if not item.marked:
                # marked just ahead of the slot, so that the commit does not make it late
                limiter.wait_until(slot - self.MARK_AHEAD)   # type: ignore[attr-defined]
                if self._held_outcome(item) or not self._mark(item):
                    return None
            on_time = limiter.wait_until(slot)   # type: ignore[attr-defined]
            if self._held_outcome(item):   # held while this message waited for its slot
                return None
            handed_over = db.utcnow()
            if on_time and limiter.on_time(slot):   # type: ignore[attr-defined]
                return handed_over
            take_now = getattr(limiter, "take_now", None)
            if take_now is not None and take_now(parts):   # nothing booked in the way: go now
                return db.utcnow()
            if booked is not None:
                item.missed = True
                self._unmark(item)
                return None
            with self._ledger:   # booked here: booked again at once, the slot lost all the same
                self.summary.missed_slots += 1

    #: what a gateway's refusal leaves in the outbox, the gateway's own words after the colon
    #: (read back by loa.reasons, in the console's language)
    OPTED_OUT = "opted_out:{code}"                      # reason: the gateway's code
    UNKNOWN = "outcome unknown: {text}"
    GAVE_UP = "gave up after {attempts:,} attempts: {text}"
    MOVED = "moved to {channel}: {text}"

    def _classify(self, item: _Item, gw: Gateway | None, exc: ProviderError) -> dict[str, Any]:
        code, text = exc.code, str(exc)[:500]
        log.info("gateway %s refused %s: %s", item.gateway, mask(item.phone), text,
                 extra={"gateway": item.gateway, "kind": exc.kind, "code": code})
        if isinstance(exc, PAUSING):
            self._pause(item.gateway, gateway_state.PAUSED_FOR.format(kind=exc.kind, text=text))
            # nothing was sent: the row goes back, and this attempt does not count
            return {"state": "planned", "attempts": item.attempts - 1, "error_code": code, "error_text": text}
        if isinstance(exc, NotReachableError):
            return self._fallback(item, code, text)
        if isinstance(exc, OptedOutError):
            item.opted_out = code or exc.kind
            return {"state": "suppressed", "reason": self.OPTED_OUT.format(code=code), "error_code": code,
                    "error_text": text}
        if isinstance(exc, PermanentError):
            return _failed(code, text)
        if exc.ambiguous and not (gw and gw.provider.dedupes_by_key):
            return {"state": "unknown", "error_code": code, "error_text": self.UNKNOWN.format(text=text)}
        if isinstance(exc, QuotaError):
            return self._hold(item, exc)
        if isinstance(exc, ThrottledError | DeferredError):
            # pushback and deferrals (Zalo's night rule) are not failures: the
            # attempt is not counted, and the message's validity bounds how long it waits
            if isinstance(exc, ThrottledError) and gw is not None:
                gw.limiter.slow_down(exc.retry_after or 1.0)
            delay = exc.retry_after or BACKOFF[0] * self._rng.uniform(0.8, 1.2)
            return {"state": "deferred", "attempts": item.attempts - 1, "error_code": code, "error_text": text,
                    "due_at": db.utcnow() + timedelta(seconds=delay), "reason": exc.kind}
        if item.attempts >= MAX_ATTEMPTS:
            return _failed(code, self.GAVE_UP.format(attempts=item.attempts, text=text))
        delay = exc.retry_after or BACKOFF[item.attempts - 1] * self._rng.uniform(0.8, 1.2)
        return {"state": "deferred", "due_at": db.utcnow() + timedelta(seconds=delay),
                "error_code": code, "error_text": text}

    def _fallback(self, item: _Item, code: str | None, text: str) -> dict[str, Any]:
        channels = list(item.definition.get("channels", []))
        later = channels[channels.index(item.channel) + 1:] if item.channel in channels else []
        if not later:
            return _failed(code, text)
        nxt = later[0]
        gateway = item.definition.get(nxt, {}).get("gateway") or self.config.default_gateway(nxt)
        if gateway is None:
            return _failed(code, f"{text}; no gateway for fallback channel {nxt}")
        return {"state": "planned", "channel": nxt, "gateway": gateway, "due_at": db.utcnow(),
                "attempts": 0, "error_code": code, "error_text": self.MOVED.format(channel=nxt, text=text)}

    def _record(self, items: list[_Item]) -> None:
        now = db.utcnow()
        with self.engine.begin() as conn:
            lock_rows(conn, O.c.id.in_([item.id for item in items]))
            refused = self._record_rows(conn, items, now)
        self._log_refused(refused)

    def _record_rows(self, conn: Connection, items: list[_Item], now: datetime) -> list[_Item]:
        """Write the outcomes of ``items`` (rows locked by the caller); the recipients who
        refused, to be logged once committed."""
        by_shape: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for item in items:
            outcome = dict(item.outcome or {})
            self.summary.outcomes[outcome.get("state", "?")] += 1
            if outcome.get("state") == "deferred" and outcome.get("due_at"):
                self.summary.deferred[(_deferral(outcome), outcome["due_at"])] += 1
            elif outcome.get("state") == "failed":
                self.summary.failed[_failure(outcome)] += 1
            outcome.setdefault("attempts", item.attempts)
            outcome |= {"lease_until": None, "updated_at": now}
            if item.message is not None and outcome["state"] in ("sent", "delivered", "unknown"):
                outcome["text"] = _text_of(item.message)    # what went out, for the person's export
            if outcome["state"] in ("planned", "deferred"):
                outcome["worker"] = None
            shape = tuple(sorted(outcome))
            by_shape.setdefault(shape, []).append({"b_id": item.id, **{f"v_{k}": v for k, v in outcome.items()}})
        refused = [item for item in items if item.opted_out]
        for shape, params in by_shape.items():
            conn.execute(_update_for(shape), params)
        for item in refused:   # with the row's own outcome: one is never kept without the other
            opt_out(conn, item.phone, now, f"gateway:{item.gateway}:{item.opted_out}")
        return refused

    def _log_refused(self, refused: list[_Item]) -> None:
        for item in refused:
            log.warning("gateway %s: %s opted out (the gateway refused with %s)", item.gateway, mask(item.phone),
                        item.opted_out, extra={"gateway": item.gateway, "kind": "opted_out", "code": item.opted_out})

    def _pause(self, gateway: str, reason: str) -> None:
        """Pause a gateway for every worker until `loa gateways resume`."""
        reason = mask_phones(reason)   # shown by status, metrics and the console: no full numbers
        if gateway not in self.summary.paused:
            self.summary.paused[gateway] = reason
            if gateway_state.pause(self.engine, gateway, reason):
                log.error("gateway %s paused: %s", gateway, reason, extra={"gateway": gateway, "kind": "paused"})

    def _hold(self, item: _Item, exc: ProviderError) -> dict[str, Any]:
        """A quota of the whole gateway is used up: hold its queue until the reset.

        Every other message would get the same answer, so none is offered before then:
        not this worker's (the rest of the window, the next batches: :meth:`_held_outcome`)
        and, through the ledger, not any other worker's (:meth:`_defer_queue`).  Waiting
        is not failing: no attempt is counted, and the messages' validity bounds the wait.
        """
        until = db.utcnow() + timedelta(seconds=exc.retry_after or BACKOFF[0])
        outcome = {"state": "deferred", "due_at": until, "reason": exc.kind, "error_code": exc.code,
                   "error_text": str(exc)[:500]}
        with self._hold_lock:
            known = self._held.get(item.gateway)
            new = known is None or known[0] <= db.utcnow()
            if new or known[0] < until:
                self._held[item.gateway] = (until, outcome)
        if new:
            n = self._defer_queue(item.gateway, outcome)
            log.warning("gateway %s: %s; held until %s, %d more queued message(s) deferred", item.gateway,
                        exc, until.isoformat(timespec="seconds"), n,
                        extra={"gateway": item.gateway, "kind": exc.kind, "code": exc.code})
        return {**outcome, "attempts": item.attempts - 1}

    def _held_gateways(self, now: datetime) -> list[str]:
        with self._hold_lock:   # send threads add holds while the next batch is claimed
            return [name for name, (until, _) in self._held.items() if until > now]

    def _held_outcome(self, item: _Item) -> bool:
        """Defer a message whose gateway is held (:meth:`_hold`) without calling it; False if
        the gateway is not held.  A message already marked ``sending`` gets its attempt back."""
        held = self._held.get(item.gateway)
        if held is None or held[0] <= db.utcnow():
            return False
        item.outcome = {**held[1], "attempts": item.attempts - item.marked}
        return True

    def _defer_queue(self, gateway: str, outcome: dict[str, Any]) -> int:
        """Defer every due row of ``gateway`` to the end of its hold, for every worker."""
        waiting = and_(O.c.gateway == gateway, O.c.state.in_(DUE), O.c.due_at < outcome["due_at"])
        with self.engine.begin() as conn:
            lock_rows(conn, waiting)
            return conn.execute(update(O).where(waiting)
                                .values(worker=None, updated_at=db.utcnow(), **outcome)).rowcount

    def _release(self, items: list[_Item]) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(O).where(O.c.id.in_([i.id for i in items]), O.c.state == "claimed")
                         .values(state="planned", worker=None, lease_until=None, updated_at=db.utcnow()))

    # -- housekeeping ----------------------------------------------------------
    def recover(self) -> int:
        """Return rows of workers whose lease expired (crashed or killed)."""
        now = db.utcnow()
        with self.engine.connect() as conn:
            stuck = conn.execute(select(O.c.gateway).where(O.c.state == "sending", O.c.lease_until < now)
                                 .group_by(O.c.gateway)).scalars().all()
        # asked before the write transaction: building a gateway may itself write (its limiter row)
        dedupes = {gateway: self._dedupes(gateway) for gateway in stuck}
        n = 0
        with self.engine.begin() as conn:
            lock_rows(conn, and_(O.c.state.in_(("claimed", "sending")), O.c.lease_until < now))
            n += conn.execute(update(O).where(O.c.state == "claimed", O.c.lease_until < now)
                              .values(state="planned", worker=None, lease_until=None, updated_at=now)).rowcount
            for gateway, safe in dedupes.items():
                values: dict[str, Any] = (
                    {"state": "planned", "due_at": now} if safe else
                    {"state": "unknown", "error_code": "ambiguous",
                     "error_text": "the worker stopped during the gateway call; not re-sent"}
                )
                n += conn.execute(update(O).where(O.c.state == "sending", O.c.lease_until < now,
                                                  O.c.gateway == gateway)
                                  .values(worker=None, lease_until=None, updated_at=now, **values)).rowcount
        return n

    def _dedupes(self, gateway: str) -> bool:
        try:
            return bool(self.pool.get(gateway).provider.dedupes_by_key)
        except LoaError:
            return False

    #: an expired message's error_text (read back by loa.reasons, in the console's language)
    EXPIRED = "not sent within the validity of {hours:g} h"

    def expire(self) -> int:
        """Messages not sent within their campaign's validity expire with that reason."""
        now = db.utcnow()
        r = db.runs
        n = 0
        with self.engine.begin() as conn:
            for run_id, scheduled_for, definition in conn.execute(
                select(r.c.id, r.c.scheduled_for, r.c.definition).where(r.c.status == "planned")
            ):
                hours = float(definition.get("validity_hours", 24))
                # each row carries its own deadline: a run's time plus the validity, or for an
                # arrival greeting the arrival's time plus the validity
                n += conn.execute(
                    update(O).where(O.c.run_id == run_id, O.c.state.in_(DUE), O.c.expires_at < now)
                    .values(state="expired", error_text=self.EXPIRED.format(hours=hours),
                            updated_at=now)
                ).rowcount
        self.summary.expired += n
        return n

    #: the reason of a message moved on to its campaign's next channel (read back by loa.reasons)
    UNDELIVERED = "{channel} undelivered; moved to {next}"
    NO_RECEIPT = "no {channel} receipt within {after}; moved to {next}"

    def fallback_timeouts(self) -> int:
        """Move messages on to the campaign's next channel: at once when the first channel
        reported them undelivered, and after ``fallback_after`` when no receipt came.

        A delivered message never moves, so nobody gets both channels for one run unless
        the first channel's receipt comes later than the fallback.  Runs already marked done
        are looked at too (every message accepted is not every message delivered), within
        the messages' validity, and reopened when something moves.
        """
        from loa.campaign import parse_duration

        now = db.utcnow()
        r = db.runs
        moved = 0
        with self.engine.begin() as conn:
            runs = conn.execute(select(r.c.id, r.c.definition).where(
                r.c.status.in_(("planned", "done")), r.c.scheduled_for >= now - timedelta(days=3),
                r.c.id.not_in(lifecycle.cancelled()))).all()
            for run_id, definition in runs:
                channels = list(definition.get("channels", []))
                n = 0
                for channel, nxt in zip(channels, channels[1:], strict=False):
                    gateway = definition.get(nxt, {}).get("gateway") or self.config.default_gateway(nxt)
                    after = definition.get(channel, {}).get("fallback_after")
                    cases = [(O.c.state == "undelivered", self.UNDELIVERED.format(channel=channel, next=nxt))]
                    if after:
                        limit = now - timedelta(seconds=parse_duration(after))
                        cases.append(((O.c.state == "sent") & (O.c.sent_at < limit),
                                      self.NO_RECEIPT.format(channel=channel, after=after, next=nxt)))
                    for late, reason in cases:
                        n += conn.execute(
                            update(O).where(O.c.run_id == run_id, O.c.channel == channel, late,
                                            (O.c.expires_at.is_(None)) | (O.c.expires_at > now))
                            .values(state="planned", channel=nxt, gateway=gateway, due_at=now, attempts=0,
                                    provider_id=None, sent_at=None, delivered_at=None, updated_at=now,
                                    reason=reason)
                        ).rowcount
                if n:
                    conn.execute(update(r).where(r.c.id == run_id).values(status="planned", finished_at=None))
                moved += n
        return moved

    RECONCILE_AFTER = 60.0        # seconds before asking about an unknown send
    RECONCILE_GIVE_UP = 3600.0    # seconds of "no record" before settling for unreconciled

    def reconcile(self, limit: int | None = 200, settle_after: float | None = None,
                  give_up_after: float | None = None) -> int:
        """Ask gateways that keep records about messages whose outcome is unknown; how many
        rows moved (settled, or back in the queue)."""
        done = self.reconcile_unknown(limit, settle_after, give_up_after)
        return sum(n for (action, _), n in done.items() if action in ("settled", "requeued"))

    def reconcile_unknown(self, limit: int | None = 200, settle_after: float | None = None,
                          give_up_after: float | None = None) -> Counter[tuple[str, str]]:
        """Resolve ``unknown`` rows by asking their gateway (:meth:`Provider.lookup`).

        A row the gateway has becomes sent (or delivered, undelivered); one the gateway says
        it never got (:class:`NotReceived`) goes back to the queue, to be sent once; any
        other stays unknown, with the reason.  A gateway may record a message a little after
        answering, so rows are asked about once they are ``settle_after`` seconds old, and
        marked unreconciled only when the gateway still has no record ``give_up_after``
        seconds on.  Returns (action, detail) -> rows: ``settled`` (detail: the new state),
        ``requeued``, ``unknown`` (detail: why it stays).
        """
        settle_after = self.RECONCILE_AFTER if settle_after is None else settle_after
        give_up_after = self.RECONCILE_GIVE_UP if give_up_after is None else give_up_after
        done: Counter[tuple[str, str]] = Counter()
        now = db.utcnow()
        r = db.runs
        unknown = [O.c.state == "unknown", O.c.error_code.is_distinct_from("unreconciled")]
        if (flt := self._campaign_filter()) is not None:
            unknown.append(flt)
        askable = [name for name, spec in self.config.gateways.items() if _has_lookup(spec.type)]
        with self.engine.connect() as conn:
            for gateway, n in conn.execute(select(O.c.gateway, func.count()).where(
                    *unknown, O.c.gateway.not_in(askable)).group_by(O.c.gateway)):
                done["unknown", f"gateway {gateway} cannot be asked what it received"] += n
            query = (select(O.c.id, O.c.run_id, O.c.subscriber_id, O.c.gateway, O.c.provider_id, O.c.channel,
                            O.c.updated_at, O.c.attempts, r.c.definition, r.c.created_at)
                     .join(r, r.c.id == O.c.run_id)
                     .where(*unknown, O.c.gateway.in_(askable))
                     .order_by(O.c.updated_at))
            rows = conn.execute(query.limit(limit) if limit else query).all()
        for (row_id, run_id, subscriber_id, gateway, provider_id, channel, updated_at, attempts, definition,
             run_created) in rows:
            if updated_at > now - timedelta(seconds=settle_after):
                done["unknown", "too recent to ask: the gateway may not have recorded it yet"] += 1
                continue
            key = db.key_for(run_id, subscriber_id, channel, definition)
            try:
                gw = self.pool.get(gateway)
                if not provider_id and not gw.provider.lookup_by_key:
                    # Twilio, eSMS, Zalo look a message up by their own id, which a send cut
                    # short never returned: Twilio can list what it sent to the number; a
                    # receipt that names our key may still settle it
                    found, why = self._search(gw, key, row_id, subscriber_id, run_created)
                    if why:
                        done["unknown", why] += 1
                        continue
                else:
                    found = gw.provider.lookup(key, provider_id)
            except (LoaError, ProviderError) as exc:
                log.info("gateway %s: lookup failed: %s", gateway, exc)
                done["unknown", f"gateway {gateway}: lookup failed: {mask_phones(str(exc))[:200]}"] += 1
                continue
            reopen = False
            if found is None:
                if updated_at > now - timedelta(seconds=give_up_after):
                    done["unknown", f"gateway {gateway} has no record of it yet; asked again later"] += 1
                    continue           # ask again later
                action = ("unknown", f"gateway {gateway} has no record of it")
                values: dict[str, Any] = {"error_code": "unreconciled",
                                          "error_text": "the gateway has no record of this message"}
            elif isinstance(found, NotReceived) and attempts >= MAX_ATTEMPTS:
                action = ("settled", "failed")
                values = _failed("not_received", f"{gateway}: {found.reason}, after {attempts} attempts")
            elif isinstance(found, NotReceived) and (cancel := self._cancelled(run_id)):
                # never taken, and its run was cancelled meanwhile: an unsent message, so cancelled
                action = ("settled", "cancelled")
                values = {"state": "cancelled", "reason": cancel, "worker": None, "lease_until": None,
                          "provider_id": None, "error_code": "not_received",
                          "error_text": f"{gateway}: {found.reason}; not sent again: cancelled"[:500]}
            elif isinstance(found, NotReceived):
                # never taken: back in the queue, to be sent once; its attempt stays counted
                action, reopen = ("requeued", ""), True
                values = {"state": "planned", "due_at": now, "worker": None, "lease_until": None,
                          "provider_id": None, "error_code": "not_received",
                          "error_text": f"{gateway}: {found.reason}; queued again"[:500]}
            elif isinstance(found, SendResult):
                values = {"state": "delivered" if found.status == "delivered" else "sent",
                          "provider_id": found.provider_id, "sent_at": func.coalesce(O.c.sent_at, O.c.updated_at),
                          "error_code": None, "error_text": None, **_reserved_cost()}
                action = ("settled", values["state"])
            else:
                values = {"state": found.status, "provider_id": found.provider_id or provider_id,
                          "sent_at": func.coalesce(O.c.sent_at, O.c.updated_at), "delivered_at": found.at or now,
                          "error_code": found.error_code, "error_text": found.error_text, **_reserved_cost()}
                action = ("settled", found.status)
            with self.engine.begin() as conn:
                moved = conn.execute(update(O).where(O.c.id == row_id, O.c.state == "unknown")
                                     .values(updated_at=db.utcnow(), **values)).rowcount
                if moved and reopen:   # a run already done has a message to send again
                    conn.execute(update(r).where(r.c.id == run_id, r.c.status == "done")
                                 .values(status="planned", finished_at=None))
            if moved:
                done[action] += 1
        return done

    def _cancelled(self, run_id: int) -> str | None:
        """The reason of the cancellation of ``run_id`` (or of its campaign), or None."""
        with self.engine.connect() as conn:
            state, reason = lifecycle.halted_runs(conn, [run_id]).get(run_id, (None, None))
        return reason if state == "cancelled" else None

    def _search(self, gw: Gateway, key: str, row_id: int, subscriber_id: int, run_created: datetime
                ) -> tuple[DeliveryReceipt | SendResult | NotReceived | None, str | None]:
        """Ask a gateway that finds messages by its own ids only for what it sent to the
        subscriber since the run began (:meth:`Provider.search`); (answer, None), or
        (None, why it cannot be asked)."""
        if type(gw.provider).search is ProviderBase.search:
            return None, f"gateway {gw.name} looks messages up only by its own id, and this send returned none"
        with self.engine.connect() as conn:
            phone = conn.scalar(select(db.subscribers.c.phone).where(db.subscribers.c.id == subscriber_id))
            others = conn.execute(select(O.c.id, O.c.state, O.c.provider_id).where(
                O.c.subscriber_id == subscriber_id, O.c.gateway == gw.name, O.c.id != row_id)).all()
        if any(state in ("unknown", "sending") and not pid for _, state, pid in others):
            return None, (f"gateway {gw.name} looks messages up only by its own id, and several sends "
                          "to this number returned none")
        known = frozenset(pid for _, _, pid in others if pid)
        # a minute before the run began: the clocks of loa's database and of the gateway differ
        return gw.provider.search(key, phone, run_created - timedelta(minutes=1), known), None

    def finish_runs(self) -> None:
        r = db.runs
        now = db.utcnow()
        open_states = ("planned", "deferred", "claimed", "sending")
        with self.engine.begin() as conn:
            pending = select(O.c.id).where(O.c.run_id == r.c.id, O.c.state.in_(open_states)).exists()
            conn.execute(update(r).where(r.c.status == "planned", ~pending).values(status="done", finished_at=now))

    def poll(self, drain: bool = False, timeout: float = 10.0) -> None:
        """Fetch receipts, responses and inbound SMS from gateways that hold them."""
        deadline = time.monotonic() + timeout
        while True:
            got = 0
            for gw in self.pool:
                try:
                    receipts = list(gw.provider.fetch_receipts())
                    responses = list(gw.provider.fetch_responses())
                except ProviderError as exc:
                    log.warning("gateway %s: cannot fetch receipts: %s", gw.name, exc)
                    continue
                if receipts or responses:
                    with self.engine.begin() as conn:
                        self.summary.receipts += apply_receipts(conn, gw.name, receipts)
                        self.summary.responses += apply_responses(conn, gw.name, responses)
                    got += len(receipts) + len(responses)
                    try:   # committed: the gateway may let them go (unacknowledged, they come back)
                        gw.provider.receipts_recorded(receipts, responses)
                    except ProviderError as exc:
                        log.warning("gateway %s: cannot acknowledge receipts: %s", gw.name, exc)
                got += self._take_inbound(gw)
            if not drain or (got == 0 and not self._awaiting_receipts()) or time.monotonic() > deadline:
                return
            if got == 0:
                time.sleep(0.05)

    def _take_inbound(self, gw: Gateway) -> int:
        """Subscribers' SMS a gateway held for polling (SMPP), on the webhooks' path: a "TC"
        opts out at once and is confirmed through the same gateway."""
        try:
            inbound = list(gw.provider.fetch_inbound())
        except ProviderError as exc:
            log.warning("gateway %s: cannot fetch inbound SMS: %s", gw.name, exc)
            return 0
        # the gateway has acknowledged these SMS: one that cannot be recorded now goes back
        # to it for the next poll, and never takes the rest of the batch down with it
        failed = [message for message in inbound if not self._receive(gw.name, message)]
        if failed:
            try:
                gw.provider.requeue_inbound(failed)
            except NotImplementedError:
                log.error("gateway %s: %d inbound SMS lost: its adapter cannot take them back", gw.name, len(failed))
        self.summary.inbound += len(inbound) - len(failed)
        return len(inbound) - len(failed)

    def _receive(self, gateway: str, message: InboundMessage) -> bool:
        """Record one inbound SMS; False if it could not be, to be tried again."""
        try:
            receive_inbound(self.engine, self.pool, self.config, gateway, message)
        except Exception:   # a database outage or a bug: keep the SMS, retry it
            log.exception("gateway %s: inbound SMS from %s not recorded; kept for the next poll", gateway,
                          mask(message.phone), extra={"gateway": gateway, "kind": "inbound"})
            return False
        return True

    def _awaiting_receipts(self) -> bool:
        for gw in self.pool:
            pending = getattr(getattr(gw.provider, "network", None), "pending", None)
            if callable(pending) and any(pending()):
                return True
        return False


@functools.lru_cache(maxsize=64)
def _update_for(shape: tuple[str, ...]) -> Any:
    """One UPDATE per set of columns, built once: executemany reuses its compiled form."""
    values: dict[str, Any] = {k: bindparam(f"v_{k}", type_=O.c[k].type) for k in shape}
    # Another worker polling the same gateway may have applied this message's receipt
    # while we were still in the call: the receipt is the later news, so keep its
    # state and error (the provider id, parts and times are still written).
    receipted = O.c.state.in_([literal(s) for s in RECEIPTED])   # executemany cannot expand an IN
    for k in ("state", "error_code", "error_text"):
        if k in values:
            values[k] = case((receipted, O.c[k]), else_=values[k])
    if "cost_vnd" in values:   # a send on a fallback channel adds to what the first one cost
        values["cost_vnd"] = func.coalesce(O.c.cost_vnd, 0) + values["cost_vnd"]
    # a message cancelled while this worker held it (never handed to its gateway) stays cancelled
    return update(O).where(O.c.id == bindparam("b_id"), O.c.state != literal("cancelled")).values(**values)


def _reserved_cost() -> dict[str, Any]:
    """A send of unknown outcome found sent: the price held for it becomes its cost."""
    return {"cost_vnd": case((O.c.reserved_vnd.is_(None), O.c.cost_vnd),
                             else_=func.coalesce(O.c.cost_vnd, 0) + O.c.reserved_vnd)}


def _has_lookup(type_name: str) -> bool:
    """Does this gateway type keep records loa can ask about?"""
    from providers import registry

    try:
        return registry.get(type_name).lookup is not ProviderBase.lookup
    except (registry.UnknownProviderError, ImportError, TypeError):
        return False


def _context(row: Any) -> dict[str, Any]:
    parent = None
    if row["p_code"] is not None:
        parent = {"code": row["p_code"], "name": row["p_name"], "level": row["p_level"],
                  "population": row["p_population"], "parent": None}
    area = {"code": row["code"] or "", "name": row["area_name"] or "", "level": row["level"] or "",
            "population": row["population"], "parent": parent}
    return {
        "subscriber": {"name": row["name"], "phone": row["phone"], "language": row["language"],
                       "carrier": row["carrier"]},
        "attr": dict(row["attributes"] or {}),
        "area": area,
        "campaign": {"name": row["campaign"], "description": row["description"]},
    }


def _sent(result: SendResult, message: OutgoingMessage, handed_over: datetime) -> dict[str, Any]:
    now = handed_over
    outcome = {"state": "delivered" if result.status == "delivered" else "sent", "provider_id": result.provider_id,
               "parts": result.parts or message.parts, "encoding": message.encoding if message.channel == "sms" else None,
               "sent_at": now, "error_code": None, "error_text": None}   # the reason stays: why it waited
    if outcome["state"] == "delivered":
        outcome["delivered_at"] = now
    return outcome


def _deferral(outcome: dict[str, Any]) -> str:
    """Why a message waits, in a few words: what `loa send` prints beside its time."""
    reason = outcome.get("reason") or ""
    if reason.startswith(WINDOW_REASON):
        return "send window"
    return reason or (f"retry after {outcome['error_code']}" if outcome.get("error_code") else "retry")


def _failure(outcome: dict[str, Any]) -> str:
    """Why a message failed, in one line: what `loa send` groups its failures by."""
    code, text = outcome.get("error_code"), (outcome.get("error_text") or "").strip()
    if code and not text.startswith(str(code)):
        text = f"{code}: {text}" if text else str(code)
    return mask_phones(text) or "no reason given"


def _failed(code: str | None, text: str) -> dict[str, Any]:
    return {"state": "failed", "error_code": code, "error_text": text[:500]}


def pending_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(O).where(O.c.state.in_(DUE))) or 0


__all__ = ["Dispatcher", "SendSummary", "pending_count"]


def _text_of(message: OutgoingMessage) -> str:
    """The message as it went out: the SMS text, or the Zalo template and its data."""
    if message.text:
        return message.text
    return json.dumps({"template_id": message.template_id, "data": message.template_data}, ensure_ascii=False,
                      default=str)
