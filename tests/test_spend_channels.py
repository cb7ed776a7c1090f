"""Spend across channels, end to end through the dispatcher: a ZNS message costs the Zalo
gateway's ``price_per_zns``, and a message that falls back to SMS (the recipient is no Zalo
user) costs its SMS parts besides; both are written on the ledger (``outbox.cost_vnd``) and
both count against a campaign's budget.

Zalo is ``providers.fakes.zalo`` and SMS is eSMS's fake (``providers.fakes.esms``), which
charges its own balance per part, so the gateways' own ledgers check loa's.  Everything
runs in this process with its clock at 10:00 in Vietnam (``vietnam_daytime``): no campaign
can lift Zalo's night.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import write
from sqlalchemy import select
from sqlalchemy.engine import Engine
from test_cost import charged, esms, write_config  # noqa: F401 - the eSMS fake, a fixture
from test_dispatch import import_people, phone

from loa import cost, db
from loa.campaign import load_one
from loa.config import Config, load
from loa.dispatch import Dispatcher
from loa.plan import plan_run
from providers.fakes.esms import FakeESMS
from providers.fakes.zalo import CODE_PHONE, FakeZalo

O = db.outbox
SMS_PART, ZNS = 800, 300
NOT_ON_ZALO = (1, 4)        # of the 8 people: Zalo answers -108, so their message goes by SMS


@pytest.fixture
def zalo(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeZalo]:
    with FakeZalo() as fake:
        for name, value in (("SECRET", fake.secret_key), ("OA_SECRET", fake.oa_secret),
                            ("AT", fake.access_token), ("RT", fake.refresh_token)):
            monkeypatch.setenv(f"T_ZALO_{name}", value)
        for i in NOT_ON_ZALO:
            fake.phone_errors[phone(i).lstrip("+")] = CODE_PHONE
        yield fake


def setup(engine: Engine, workdir: Path, tmp_path: Path, esms: FakeESMS, zalo: FakeZalo,  # noqa: F811
          budget: int | None) -> Config:
    import_people(engine, tmp_path, n=8)
    write_config(workdir, esms, price_per_part=SMS_PART)
    with (workdir / "config.toml").open("a", encoding="utf-8") as f:
        f.write("\n".join(["[gateways.zl]", 'type = "zalo_zns"', f'app_id = "{zalo.app_id}"',
                           'secret_key_env = "T_ZALO_SECRET"', 'oa_secret_env = "T_ZALO_OA_SECRET"',
                           'access_token_env = "T_ZALO_AT"', 'refresh_token_env = "T_ZALO_RT"',
                           f'base_url = "{zalo.url}"', f'oauth_url = "{zalo.url}"', "timeout = 5",
                           "rate = 1000", f"price_per_zns = {ZNS}"]) + "\n")
    write(workdir / "templates" / "sms" / "c.j2", "Xin chao ban\n")      # GSM-7, one part
    write(workdir / "templates" / "zalo" / "c.toml", 'template_id = "9001"\n[data]\nname = "{{ subscriber.name }}"\n')
    write(workdir / "campaigns" / "c.toml", "\n".join([
        'name = "c"', 'channels = ["zalo", "sms"]', "holdout = 0", *([f"budget = {budget}"] if budget else []),
        "[window]", 'start = "00:00"', 'end = "24:00"',
        "[zalo]", 'template = "zalo/c.toml"', 'gateway = "zl"', "[sms]", 'template = "sms/c.j2"']) + "\n")
    return load(workdir / "config.toml")


def ledger(engine: Engine) -> list[tuple[str, str, str, int | None]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(db.subscribers.c.phone, O.c.channel, O.c.state, O.c.cost_vnd)
                                               .join(db.subscribers, db.subscribers.c.id == O.c.subscriber_id)
                                               .order_by(db.subscribers.c.phone))]


def test_zns_and_sms_fallback_sends_are_priced_on_the_ledger(
        engine: Engine, workdir: Path, tmp_path: Path, esms: FakeESMS, zalo: FakeZalo,  # noqa: F811
        vietnam_daytime: object) -> None:
    config = setup(engine, workdir, tmp_path, esms, zalo, budget=None)
    plan_run(engine, config, load_one(config.campaigns_dir, "c"))
    Dispatcher(engine, config).run_until_empty()

    fallback = {phone(i) for i in NOT_ON_ZALO}
    assert ledger(engine) == [(p, "sms", "sent", SMS_PART) if p in fallback else (p, "zalo", "sent", ZNS)
                              for p in sorted(phone(i) for i in range(8))]
    assert len(zalo.sent) == 6 and len(esms.messages) == 2
    spent = cost.spend(engine, "c")
    assert spent.spent_vnd == 6 * ZNS + charged(esms) == 6 * ZNS + 2 * SMS_PART
    assert (spent.messages, spent.unpriced) == (8, 0)


def test_a_budget_counts_zns_prices_and_sms_fallbacks_before_it_pauses(
        engine: Engine, workdir: Path, tmp_path: Path, esms: FakeESMS, zalo: FakeZalo,  # noqa: F811
        vietnam_daytime: object) -> None:
    # 8 ZNS fit (2,400 reserved); 6 are sent (1,800) and 2 fall back to SMS: the first fits (2,600),
    # the second would make 3,400
    budget = 8 * ZNS + SMS_PART
    config = setup(engine, workdir, tmp_path, esms, zalo, budget=budget)
    plan_run(engine, config, load_one(config.campaigns_dir, "c"))
    summary = Dispatcher(engine, config).run_until_empty()

    states = Counter((channel, state) for _, channel, state, _ in ledger(engine))
    assert states == {("zalo", "sent"): 6, ("sms", "sent"): 1, ("sms", "planned"): 1}, states
    assert cost.spend(engine, "c").spent_vnd == 6 * ZNS + charged(esms) == 6 * ZNS + SMS_PART <= budget
    reason = (f"budget {budget:,} VND: {6 * ZNS + SMS_PART:,} VND spent or in flight, and the next message costs "
              f"{SMS_PART:,} VND")
    assert summary.over_budget == {"c": reason}
    with engine.connect() as conn:
        assert tuple(conn.execute(select(db.campaigns.c.state, db.campaigns.c.state_by)
                                  .where(db.campaigns.c.name == "c")).one()) == ("paused", "system")
