"""Benchmark: the SQL statements and the time of one poll of the console's progress table.

Each side runs in its own process on its own SQLite file with the same data: N campaigns of
Sơn La (half for the whole province, half for Mộc Châu), each with one planned run of the
same 300 subscribers, a third of each run sent five minutes before.  A signed-in user polls the
dashboard's progress table, as the browser does:

* **before**: loa as of ``--before`` (a git revision, unpacked with ``git archive``), whose
  dashboard polled ``GET /console/?fragment=1`` every second, recomputing everything;
* **after**: this tree's ``GET /console/progress`` (every 5 s): a full answer, and an unchanged
  one (``If-None-Match`` with the ETag it was given: 304, nothing rendered).

Statements are counted with an SQLAlchemy ``before_cursor_execute`` listener on the engine;
the time is the median of ``--polls`` polls in process (Starlette's TestClient), after one
poll to warm up.  Users: an unbound admin, and a viewer bound to Mộc Châu.

    python bench/console_poll.py                          # 10 and 40 campaigns
    python bench/console_poll.py --campaigns 10 --polls 50 --before 53ed793
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import timedelta
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct-horse-1"
PEOPLE = 300
AREAS = """code,name,parent,level,population,population_as_of
14,Sơn La,,province,1248415,2020-08-17
126,Huyện Mộc Châu,14,district,112402,2020-08-17
125,Huyện Mai Sơn,14,district,163344,2020-08-17
"""
CAMPAIGN = """name = "{name}"
channels = ["sms"]
holdout = 0.1
[segment]
areas = ["{area}"]
[sms]
template = "sms/{name}.j2"
[window]
start = "00:00"
end = "24:00"
"""
CONFIG = """timezone = "Asia/Ho_Chi_Minh"
[defaults]
sms_gateway = "sim"
[gateways.sim]
type = "simulator"
rate = 100000
"""


def side(kind: str, campaigns: int, polls: int) -> dict[str, object]:
    """One side's figures, in this process (``sys.path`` already points at its tree)."""
    import re

    from sqlalchemy import event, select, update
    from starlette.testclient import TestClient

    from loa import auth, db, importer, versions
    from loa.config import load
    from loa.plan import plan_run
    from loa.web import Web

    work = Path(tempfile.mkdtemp(prefix="loa-poll-"))
    os.environ["LOA_DATABASE_URL"] = f"sqlite:///{work}/loa.db"
    for folder in ("campaigns", "templates/sms"):
        (work / folder).mkdir(parents=True)
    (work / "config.toml").write_text(CONFIG, encoding="utf-8")
    config = load(work / "config.toml")
    engine = db.make_engine(os.environ["LOA_DATABASE_URL"])
    db.create_schema(engine)
    (work / "areas.csv").write_text(AREAS, encoding="utf-8")
    importer.run_import(engine, importer.AreasHandler(engine, work / "areas.csv"), work / "areas.csv")
    lines = ["phone,name,area"] + [f"0912{i:06d},Người {i},{'126' if i % 2 else '125'}" for i in range(PEOPLE)]
    (work / "people.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    importer.run_import(engine, importer.SubscribersHandler(engine, work / "people.csv"), work / "people.csv")
    names = [f"c{i:03d}" for i in range(campaigns)]
    for i, name in enumerate(names):
        (work / "templates" / "sms" / f"{name}.j2").write_text("Xin chào {{ subscriber.name }}\n", encoding="utf-8")
        area = "Sơn La" if i % 2 else "Huyện Mộc Châu"
        (work / "campaigns" / f"{name}.toml").write_text(CAMPAIGN.format(name=name, area=area), encoding="utf-8")
    versions.apply(engine, config, "os:bench")
    for name in names:
        plan_run(engine, config, versions.load(engine, config, name))
    O = db.outbox
    with engine.begin() as conn:
        ids = list(conn.scalars(select(O.c.id).where(O.c.state == "planned", O.c.id % 3 == 0)))
        # sent five minutes ago: nothing moves now, so an unchanged poll stays unchanged (a rate measured over
        # the last minute changes with every poll while messages go out, as it should)
        conn.execute(update(O).where(O.c.id.in_(ids)).values(state="sent", sent_at=db.utcnow() - timedelta(minutes=5),
                                                             cost_vnd=800))
    auth.add_user(engine, "os:bench", "root", PASSWORD, "admin")
    auth.add_user(engine, "os:bench", "moc", PASSWORD, "viewer", "126")
    web = Web(engine, config)
    seen: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda conn, cur, sql, *a: seen.append(sql))
    out: dict[str, object] = {"side": kind, "campaigns": campaigns}
    for user in ("root", "moc"):
        client = TestClient(web, base_url="https://testserver")
        token = re.search(r'name="csrf" value="([^"]+)"', client.get("/console/login").text).group(1)  # type: ignore[union-attr]
        client.post("/console/login", data={"csrf": token, "name": user, "password": PASSWORD})
        url = "/console/?fragment=1" if kind == "before" else "/console/progress"
        ways = {"full": {}}
        first = client.get(url)
        assert first.status_code == 200 and "data-campaign=" in first.text, first.text[:300]
        if kind == "after":
            ways["unchanged"] = {"If-None-Match": first.headers["etag"], "HX-Request": "true"}
        for way, headers in ways.items():
            client.get(url, headers=headers)                         # warm
            counts, times = [], []
            for _ in range(polls):
                seen.clear()
                start = time.perf_counter()
                r = client.get(url, headers=headers)
                times.append(time.perf_counter() - start)
                counts.append(len(seen))
                assert r.status_code == (204 if way == "unchanged" else 200), r.status_code
            out[f"{user}.{way}.statements"] = max(counts)
            out[f"{user}.{way}.ms"] = round(1000 * statistics.median(times), 2)
    web.pool.close()
    return out


def tree_of(revision: str) -> Path:
    """This repository's files as of ``revision``, unpacked into a temporary folder."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "loa", "providers", "scheduler.py"],
                             check=True, capture_output=True).stdout
    folder = Path(tempfile.mkdtemp(prefix="loa-before-"))
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def run_side(kind: str, tree: Path, campaigns: int, polls: int) -> dict[str, object]:
    code = (f"import sys; sys.path.insert(0, {str(tree)!r}); sys.path.insert(1, {str(ROOT / 'bench')!r}); "
            f"import json, console_poll; print(json.dumps(console_poll.side({kind!r}, {campaigns}, {polls})))")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env,
                          cwd=tempfile.gettempdir())
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--campaigns", type=int, nargs="+", default=[10, 40])
    parser.add_argument("--polls", type=int, default=30)
    parser.add_argument("--before", default="53ed793", help="the revision whose dashboard polled /console/?fragment=1")
    args = parser.parse_args()
    before = tree_of(args.before)
    print(f"load average {os.getloadavg()[0]:.1f}; SQLite; {PEOPLE} subscribers per run; median of {args.polls} polls")
    print("| campaigns | user | before: statements, ms | after (full): statements, ms | after (unchanged, 204): "
          "statements, ms | after/before time (full) |")
    print("|---|---|---|---|---|---|")
    for n in args.campaigns:
        old = run_side("before", before, n, args.polls)
        new = run_side("after", ROOT, n, args.polls)
        for user, label in (("root", "admin"), ("moc", "viewer of Mộc Châu")):
            b, f, u = (f"{user}.full", f"{user}.full", f"{user}.unchanged")
            print(f"| {n} | {label} | {old[b + '.statements']}, {old[b + '.ms']} | {new[f + '.statements']}, "
                  f"{new[f + '.ms']} | {new[u + '.statements']}, {new[u + '.ms']} | "
                  f"{float(new[f + '.ms']) / float(old[b + '.ms']):.2f}× |")


if __name__ == "__main__":
    main()
