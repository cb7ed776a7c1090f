"""Personal data (loa.consent, loa.subjects, loa.retention, loa.ledger).

* Consent per purpose is imported by CSV (rejects with line and field) and withdrawn by an
  opt-out reply; an advertising campaign plans only subscribers with a current advertising
  consent, the others are suppressed ``no_consent``; validate warns when nobody consented.
* ``loa subjects show|export|restrict|erase``: the export holds everything about one number;
  an erasure keeps past report totals, leaves no byte of the number in the SQLite file (the
  number searched in every format loa stores), keeps an opt-out in force and refuses a
  re-import until a new consent; each is audited under the number's keyed hash.
* Bad input: a malformed or unknown number, a missing key, messages in flight.
* Retention: ``loa purge`` (and ``--dry-run``) deletes old arrivals, clears old texts, hashes
  inactive subscribers' numbers; reports count the same afterwards.
* Ledger exports carry numbers only for roles that may read subscribers.
"""

from __future__ import annotations

import csv
import json
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import AREAS_CSV, write
from sqlalchemy import func, select, update
from sqlalchemy.engine import Engine
from test_cli import invoke, ok, one_line_error

from loa import audit, auth, db
from loa.config import load
from loa.gateways import GatewayPool
from loa.inbound import receive_inbound
from providers.base import InboundMessage

KEY = "a-test-key-for-the-keyed-hash-0123456789"
PHONE = "0912000001"            # Người 1, in Thành phố Sơn La
E164, DIGITS, NSN = "+84912000001", "84912000001", "912000001"

CAMPAIGN = """
name = "{name}"
description = "Ưu đãi"
channels = ["sms"]
advertising = {advertising}
opt_out = "Tu choi: TC gui 8xxx"
[segment]
areas = ["Sơn La"]
[sms]
template = "sms/offer.j2"
[window]
start = "00:00"
end = "24:00"
"""


@pytest.fixture
def people(workdir: Path, tmp_path: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Areas, 6 subscribers (one with an arrival and a reply), users of each role, the key set."""
    monkeypatch.setenv("LOA_SUBJECT_KEY", KEY)
    monkeypatch.setenv("LOA_ACTOR", "test")
    ok(invoke(workdir, "import", "areas", str(write(tmp_path / "areas.csv", AREAS_CSV))))
    rows = "\n".join(f"091200000{i},Người {i},{'116' if i % 2 else '125'},n{i}" for i in range(6))
    ok(invoke(workdir, "import", "subscribers", str(write(tmp_path / "subs.csv", "phone,name,area,note\n" + rows))))
    ok(invoke(workdir, "import", "arrivals", str(write(tmp_path / "arr.csv", f"phone,area,time\n{PHONE},116,2026-01-02\n"))))
    write(workdir / "templates" / "sms" / "offer.j2", "Chào {{ subscriber.name }}, ưu đãi {{ attr.note }}.\n")
    for role in auth.ROLES:
        auth.add_user(engine, "test", role, "a long password", role)
    return workdir


def campaign(workdir: Path, name: str, advertising: bool) -> None:
    write(workdir / "campaigns" / f"{name}.toml", CAMPAIGN.format(name=name, advertising=str(advertising).lower()))


def outbox(engine: Engine, name: str) -> dict[str, tuple[str, str | None]]:
    S, O, R, C = db.subscribers, db.outbox, db.runs, db.campaigns
    with engine.connect() as conn:
        return {p: (s, r) for p, s, r in conn.execute(
            select(S.c.phone, O.c.state, O.c.reason).join(O, O.c.subscriber_id == S.c.id)
            .join(R, R.c.id == O.c.run_id).join(C, C.c.id == R.c.campaign_id).where(C.c.name == name))}


def test_advertising_plans_only_consenting_subscribers_and_an_opt_out_reply_withdraws_consent(
        people: Path, tmp_path: Path, engine: Engine) -> None:
    workdir = people
    campaign(workdir, "offer", advertising=True)
    r = invoke(workdir, "campaigns", "validate")
    ok(r)
    assert "none of the 6 subscribers of its audience has an advertising consent" in r.stderr

    consents = write(tmp_path / "consents.csv", f"""
        phone,purpose,time,granted,source,evidence
        {PHONE},advertising,2026-01-02T08:00:00+07:00,yes,hotel,Phiếu nhận phòng số 17
        0912000002,advertising,2026-01-02,,sms,"SMS reply DK to 8xxx at 2026-01-02 09:00"
        0912000003,public_interest,2026-01-02,yes,form,
        0912000004,advertising,2026-01-02,no,form,
        0912000099,advertising,2026-01-02,yes,form,
        0912000005,marketing,2026-01-02,yes,form,
        0912000005,advertising,3026-01-02,yes,form,
        abc,advertising,2026-01-02,yes,form,
    """)
    r = ok(invoke(workdir, "import", "consents", str(consents)))
    assert "8 rows read, 4 imported" in r.stdout and "4 rejected" in r.stdout
    rejects = r.stderr
    assert f"{consents}:6: phone: no subscriber has this phone" in rejects
    assert f"{consents}:7: purpose: unknown purpose 'marketing'" in rejects
    assert f"{consents}:8: time: in the future" in rejects
    assert f"{consents}:9: phone:" in rejects
    # the rejects file says the reasons in the configuration's language (Vietnamese by default)
    reasons = {row["line"]: (row["column"], row["reason"])
               for row in csv.DictReader((tmp_path / "consents.rejects.csv").open(encoding="utf-8"))}
    assert reasons == {"6": ("phone", "không có thuê bao nào có số này; hãy nhập thuê bao trước"),
                       "7": ("purpose", ("mục đích không xác định 'marketing': phải là một trong "
                                         "public_interest, advertising")),
                       "8": ("time", "thời điểm ở tương lai: '3026-01-02'"),
                       "9": ("phone", "không phải số điện thoại Việt Nam hợp lệ")}
    assert "has an advertising consent" not in ok(invoke(workdir, "campaigns", "validate")).stderr

    ok(invoke(workdir, "campaigns", "run", "offer"))
    planned = outbox(engine, "offer")
    assert planned[E164] == ("planned", None) and planned["+84912000002"] == ("planned", None)
    assert {p: v for p, v in planned.items() if p not in (E164, "+84912000002")} == {
        f"+8491200000{i}": ("suppressed", "no_consent") for i in (0, 3, 4, 5)}
    campaign(workdir, "info", advertising=False)      # public interest: consent is not asked
    ok(invoke(workdir, "campaigns", "run", "info"))
    assert {s for s, _ in outbox(engine, "info").values()} == {"planned"}

    # an opt-out reply withdraws every consent at once; the next advertising run suppresses it
    config = load(workdir / "config.toml")
    assert receive_inbound(engine, GatewayPool(config), config, "sim", InboundMessage(phone=PHONE, text="TC", provider_id="in-1",
                                                                       at=db.utcnow()))
    with engine.connect() as conn:
        current = conn.execute(select(db.consents.c.withdrawn_at, db.consents.c.withdrawn_source)
                               .join(db.subscribers).where(db.subscribers.c.phone == E164)).one()
    assert current.withdrawn_at is not None and current.withdrawn_source == "reply:sim"


def sent_run(workdir: Path, engine: Engine) -> None:
    """An advertising campaign with everyone consenting, sent; subscriber 1 installed."""
    rows = "\n".join(f"091200000{i},advertising,2026-01-02,yes,form,phiếu {i}" for i in range(6))
    ok(invoke(workdir, "import", "consents", str(write(workdir / "c.csv", "phone,purpose,time,granted,source,evidence\n"
                                                      + rows))))
    campaign(workdir, "offer", advertising=True)
    ok(invoke(workdir, "campaigns", "run", "offer"))
    ok(invoke(workdir, "send"))
    ok(invoke(workdir, "import", "events", str(write(workdir / "ev.csv", f"phone,type,time\n{PHONE},installed,"
                                                     f"{(db.utcnow() + timedelta(minutes=1)).isoformat()}\n"))))


def report_totals(workdir: Path) -> dict[str, object]:
    data = json.loads(ok(invoke(workdir, "report", "offer", "--format", "json")).stdout)
    data.pop("generated_at", None)
    return data


def test_export_then_erase_leaves_report_totals_and_no_byte_of_the_number(
        people: Path, engine: Engine, database_url: str) -> None:
    workdir = people
    sent_run(workdir, engine)
    config = load(workdir / "config.toml")
    receive_inbound(engine, GatewayPool(config), config, "sim", InboundMessage(phone=PHONE, text="Cảm ơn", provider_id="in-2",
                                                                at=db.utcnow()))

    one_line_error(invoke(workdir, "subjects", "export", PHONE, "--as", "operator", "--reason", "r"),
                   "subjects.read is not allowed for role operator")
    data = json.loads(ok(invoke(workdir, "subjects", "export", PHONE, "--as", "approver",
                                "--reason", "yêu cầu số 12")).stdout)
    assert data["subscriber"]["phone"] == E164 and data["subscriber"]["name"] == "Người 1"
    assert data["subscriber"]["attributes"] == {"note": "n1"}
    assert data["subscriber"]["area"] == {"code": "116", "name": "Thành phố Sơn La"}
    assert [c["evidence"] for c in data["consents"]] == ["phiếu 1"]
    assert [m["text"] for m in data["messages"]] == ["[QC] Chào Người 1, ưu đãi n1. Tu choi: TC gui 8xxx"]
    assert [e["type"] for e in data["events"]] == ["replied", "installed"] or \
        sorted(e["type"] for e in data["events"]) == ["installed", "replied"]
    assert [a["area"] for a in data["arrivals"]] == ["116"]
    show = ok(invoke(workdir, "subjects", "show", "+84 912 000 001", "--as", "admin", "--reason", "yêu cầu số 12"))
    assert "Người 1" in show.stdout and "consent advertising" in show.stdout

    before = report_totals(workdir)
    r = ok(invoke(workdir, "subjects", "erase", DIGITS, "--as", "admin", "--reason", "yêu cầu xoá số 13", "--yes"))
    assert "erased" in r.stdout
    assert report_totals(workdir) == before
    one_line_error(invoke(workdir, "subjects", "show", PHONE, "--as", "admin", "--reason", "r"), "erased on")

    with engine.connect() as conn:
        log = conn.execute(select(db.audit_log.c.action, db.audit_log.c.actor, db.audit_log.c.object_id,
                                  db.audit_log.c.reason).where(db.audit_log.c.action.startswith("subjects."))
                           .order_by(db.audit_log.c.id)).all()
    assert [(a, actor, reason) for a, actor, _, reason in log] == [
        ("subjects.export", "user:approver", "yêu cầu số 12"), ("subjects.show", "user:admin", "yêu cầu số 12"),
        ("subjects.erase", "user:admin", "yêu cầu xoá số 13")]
    assert len({o for _, _, o, _ in log}) == 1 and log[0][2].startswith("#")

    if database_url.startswith("sqlite:///"):
        path = Path(database_url.removeprefix("sqlite:///"))
        engine.dispose()
        found = [f.name for f in path.parent.glob(path.name + "*") for n in (E164, DIGITS, "0" + NSN, NSN)
                 if n.encode() in f.read_bytes()]
        assert found == []
        # the other subscribers are still there: the search would find a number that is
        assert b"912000002" in path.read_bytes()

    # a re-import cannot bring the person back without a new consent given since
    r = ok(invoke(workdir, "import", "subscribers", str(write(workdir / "again.csv", f"phone,name\n{PHONE},Lại\n"))))
    assert "1 rejected" in r.stdout and "erased on" in r.stderr
    old = ok(invoke(workdir, "import", "consents", str(write(workdir / "old.csv",
                                                            f"phone,purpose,time\n{PHONE},advertising,2026-01-02\n"))))
    assert "1 rejected" in old.stdout and "only a consent given after that" in old.stderr
    [erased] = list(csv.DictReader((workdir / "old.rejects.csv").open(encoding="utf-8")))
    assert erased["reason"].startswith("đã bị xóa ngày ") and erased["reason"].endswith(
        " theo yêu cầu của người đó: chỉ một sự đồng ý được đưa ra sau ngày đó mới đưa số này trở lại")
    new = write(workdir / "new.csv", f"phone,purpose,time,evidence\n{PHONE},advertising,"
                                     f"{(db.utcnow() + timedelta(seconds=1)).isoformat()},DK lại\n")
    with engine.connect() as conn:   # a moment after the erasure
        conn.execute(update(db.subscribers).where(db.subscribers.c.erased_at.is_not(None))
                     .values(erased_at=db.utcnow() - timedelta(minutes=1)))
        conn.commit()
    new.write_text(f"phone,purpose,time,evidence\n{PHONE},advertising,{db.utcnow().isoformat()},DK lại\n")
    assert "1 imported" in ok(invoke(workdir, "import", "consents", str(new))).stdout
    data = json.loads(ok(invoke(workdir, "subjects", "export", PHONE, "--as", "admin", "--reason", "r")).stdout)
    assert data["subscriber"]["name"] == "" and data["messages"] == [] and len(data["consents"]) == 1


def test_an_opt_out_stays_in_force_after_erasure(people: Path, engine: Engine) -> None:
    workdir = people
    config = load(workdir / "config.toml")
    receive_inbound(engine, GatewayPool(config), config, "sim", InboundMessage(phone=PHONE, text="TU CHOI", provider_id="in-3",
                                                                at=db.utcnow() - timedelta(minutes=5)))
    ok(invoke(workdir, "subjects", "erase", PHONE, "--as", "admin", "--reason", "r", "--yes"))
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(db.dnc).where(db.dnc.c.phone == E164)) == 0
        conn.execute(update(db.subscribers).where(db.subscribers.c.erased_at.is_not(None))
                     .values(erased_at=db.utcnow() - timedelta(minutes=1)))
        conn.commit()
    write(workdir / "c.csv", f"phone,purpose,time\n{PHONE},advertising,{db.utcnow().isoformat()}\n")
    ok(invoke(workdir, "import", "consents", str(workdir / "c.csv")))
    back = ok(invoke(workdir, "import", "subscribers", str(write(workdir / "s.csv", f"phone,area,note\n{PHONE},116,n1\n"))))
    assert "1 imported" in back.stdout and "0 rejected" in back.stdout
    campaign(workdir, "offer", advertising=True)
    ok(invoke(workdir, "campaigns", "run", "offer"))
    assert outbox(engine, "offer")[E164] == ("suppressed", "opted_out")


def test_bad_numbers_a_missing_key_and_messages_in_flight_each_get_one_clear_error(
        people: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    workdir = people
    one_line_error(invoke(workdir, "subjects", "show", "12ab", "--as", "admin", "--reason", "r"), "phone")
    one_line_error(invoke(workdir, "subjects", "export", "0912999999", "--as", "admin", "--reason", "r"),
                   "no subscriber has the number +8491****999")
    one_line_error(invoke(workdir, "subjects", "show", PHONE, "--as", "admin", "--reason", " "), "--reason is empty")
    monkeypatch.delenv("LOA_SUBJECT_KEY")
    one_line_error(invoke(workdir, "subjects", "erase", PHONE, "--as", "admin", "--reason", "r", "--yes"),
                   "$LOA_SUBJECT_KEY is not set")
    monkeypatch.setenv("LOA_SUBJECT_KEY", KEY)
    one_line_error(invoke(workdir, "subjects", "erase", PHONE, "--as", "approver", "--reason", "r", "--yes"),
                   "subjects.erase is not allowed for role approver")

    campaign(workdir, "info", advertising=False)
    ok(invoke(workdir, "campaigns", "run", "info"))
    O, S = db.outbox, db.subscribers
    sid = select(S.c.id).where(S.c.phone == E164).scalar_subquery()
    with engine.begin() as conn:     # one more run's message to the number is with the gateway
        run = conn.scalar(select(O.c.run_id))
        conn.execute(update(O).where(O.c.subscriber_id == sid).values(state="sending"))
        other = conn.execute(db.runs.insert().values(campaign_id=1, scheduled_for=db.utcnow() + timedelta(days=9),
                                                     status="planned", definition={}, created_at=db.utcnow())
                             .returning(db.runs.c.id)).scalar_one()
        conn.execute(O.insert().values(run_id=other, subscriber_id=sid, state="planned", attempts=0))
    line = one_line_error(invoke(workdir, "subjects", "erase", PHONE, "--as", "admin", "--reason", "yêu cầu 7",
                                 "--yes"), "1 message(s) are with a gateway", "nothing erased",
                          "1 queued message(s) cancelled")
    assert "0912000001" not in line and E164 not in line
    with engine.connect() as conn:
        states = dict(conn.execute(select(O.c.run_id, O.c.reason).where(O.c.subscriber_id == sid)).all())
        assert conn.scalar(select(S.c.name).where(S.c.phone == E164)) == "Người 1"
    assert states[run] is None and states[other].startswith("cancelled: erasure requested by user:admin: yêu cầu 7")


def test_restrict_cancels_queued_messages_and_no_run_plans_the_person(people: Path, engine: Engine) -> None:
    workdir = people
    campaign(workdir, "info", advertising=False)
    ok(invoke(workdir, "campaigns", "run", "info"))
    r = ok(invoke(workdir, "subjects", "restrict", PHONE, "--as", "approver", "--reason", "khiếu nại 3"))
    assert "1 queued message(s) cancelled" in r.stdout
    assert outbox(engine, "info")[E164] == ("cancelled", "cancelled: processing restricted by user:approver: khiếu nại 3")
    ok(invoke(workdir, "campaigns", "run", "info", "--again"))
    with engine.connect() as conn:
        reasons = conn.execute(select(db.outbox.c.reason).join(db.subscribers)
                               .where(db.subscribers.c.phone == E164).order_by(db.outbox.c.id)).scalars().all()
    assert reasons[-1] == "restricted"
    ok(invoke(workdir, "subjects", "restrict", PHONE, "--as", "approver", "--reason", "đã giải quyết", "--lift"))
    entries = json.loads(ok(invoke(workdir, "audit", "--action", "subjects", "--format", "json")).stdout)
    assert [(e["action"], e["reason"]) for e in entries] == [("subjects.restrict", "khiếu nại 3"),
                                                           ("subjects.lift", "đã giải quyết")]


def test_purge_removes_what_is_past_its_retention_and_reports_count_the_same(
        people: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    workdir = people
    sent_run(workdir, engine)
    O, S = db.outbox, db.subscribers
    old = db.utcnow() - timedelta(days=800)
    with engine.begin() as conn:     # subscriber 0's whole history is 800 days old
        sid = conn.scalar(select(S.c.id).where(S.c.phone == "+84912000000"))
        conn.execute(update(O).where(O.c.subscriber_id == sid).values(sent_at=old, updated_at=old, due_at=old))
        conn.execute(update(S).where(S.c.id == sid).values(updated_at=old))
        conn.execute(update(db.consents).where(db.consents.c.subscriber_id == sid).values(given_at=old))
    before = report_totals(workdir)
    r = ok(invoke(workdir, "purge", "--dry-run"))
    assert r.stdout.split(";")[0] == "1 arrival(s) older than 30 d would be deleted"
    assert "1 message text(s) older than 90 d would be cleared" in r.stdout
    assert "1 number(s) of subscribers inactive for 730 d would be replaced" in r.stdout
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(db.arrivals)) == 1
    monkeypatch.delenv("LOA_SUBJECT_KEY")
    one_line_error(invoke(workdir, "purge"), "$LOA_SUBJECT_KEY is not set")
    monkeypatch.setenv("LOA_SUBJECT_KEY", KEY)
    ok(invoke(workdir, "purge"))
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(db.arrivals)) == 0
        assert conn.scalar(select(func.count()).select_from(O).where(O.c.text.is_not(None))) == 5
        phone = conn.scalar(select(S.c.phone).where(S.c.id == sid))
    assert phone.startswith("#") and len(phone) == 16
    assert report_totals(workdir) == before
    assert "0 arrival(s)" in ok(invoke(workdir, "purge", "--dry-run")).stdout
    # hashed by retention, not erased at the person's request: the number may come back
    assert "1 imported" in ok(invoke(workdir, "import", "subscribers",
                                     str(write(workdir / "s.csv", "phone\n0912000000\n")))).stdout


def test_ledger_exports_carry_numbers_only_for_roles_that_may_read_subscribers(people: Path, engine: Engine) -> None:
    workdir = people
    campaign(workdir, "info", advertising=False)
    ok(invoke(workdir, "campaigns", "run", "info"))
    full = ok(invoke(workdir, "messages", "export", "--as", "operator")).stdout
    masked = json.loads(ok(invoke(workdir, "messages", "export", "--format", "json", "--as", "viewer")).stdout)
    assert full.splitlines()[0].startswith("id,campaign,run,phone,area,state") and E164 in full
    assert len(masked) == 6 and {m["phone"][:5] for m in masked} == {"+8491"} and all("****" in m["phone"]
                                                                                    for m in masked)
    one_line_error(invoke(workdir, "messages", "export", "--campaign", "nope", "--as", "viewer"), "no campaign")


def test_the_api_exports_restricts_erases_and_records_consent_by_role(
        people: Path, engine: Engine) -> None:
    from starlette.testclient import TestClient
    from test_api import error, key, wait_done

    from loa.web import Web

    config = load(people / "config.toml")
    web = Web(engine, config)
    viewer, operator, approver, admin = (key(engine, r) for r in auth.ROLES)
    body = {"phone": PHONE, "reason": "yêu cầu 21"}
    with TestClient(web, raise_server_exceptions=False) as client:
        assert "subjects.read" in error(client.post("/api/v1/subjects/export", json=body, headers=operator), 403)
        error(client.post("/api/v1/subjects/export", json={**body, "phone": "0912999999"}, headers=approver), 404)
        error(client.post("/api/v1/subjects/export", json={**body, "phone": "12ab"}, headers=approver), 422, "phone")
        error(client.post("/api/v1/subjects/export", json={"phone": PHONE, "reason": " "}, headers=approver), 422,
              "reason")
        r = client.post("/api/v1/consents", json={"phone": PHONE, "purpose": "advertising", "source": "api",
                                                  "evidence": "DK 8xxx"}, headers=operator)
        assert r.status_code == 200 and r.json() == {"changed": True}
        job = client.post("/api/v1/consents/import", content="phone,purpose,time\n0912000002,advertising,"
                          "2026-01-02\n0912000099,advertising,2026-01-02\n", headers=operator).json()
        done = wait_done(client, operator, job["id"])
        assert done["state"] == "done" and done["counts"]["imported"] == 1 and done["counts"]["rejected"] == 1
        data = client.post("/api/v1/subjects/export", json=body, headers=approver).json()
        assert data["subscriber"]["name"] == "Người 1" and data["consents"][0]["evidence"] == "DK 8xxx"
        r = client.post("/api/v1/subjects/restrict", json=body, headers=approver)
        assert r.status_code == 200 and r.json()["restricted"] is True
        error(client.post("/api/v1/subjects/erase", json=body, headers=approver), 403)
        r = client.post("/api/v1/subjects/erase", json=body, headers=admin)
        assert r.status_code == 200 and r.json()["erased"] is True
        error(client.post("/api/v1/subjects/export", json=body, headers=admin), 404)
        campaign(people, "info", advertising=False)
        ok(invoke(people, "campaigns", "run", "info"))
        masked = client.get("/api/v1/messages/export", headers=viewer).json()
        full = client.get("/api/v1/messages/export?format=csv", headers=operator).text
    web.pool.close()
    assert len(masked) == 5 and all("****" in m["phone"] for m in masked) and "+84912000002" in full
    assert [e.action for e in audit.query(engine, action="subjects")] == [
        "subjects.export", "subjects.restrict", "subjects.erase"]
