"""Benchmark: `loa import subscribers` of N rows against the physical floors of the same work.

Floors, measured in the same run, each in its own process, taking turns with loa's runs:

- ``floor``: the csv module reading the same file plus ``phonenumbers.parse`` and
  ``format_number(E164)`` of every phone cell, with no database: the work an import cannot skip.
- ``copy`` (PostgreSQL only): raw ``COPY`` of the same normalised rows into a table of the
  subscribers' shape and indexes.

    python bench/import_subscribers.py                          # SQLite, 1,000,000 rows
    python bench/import_subscribers.py --rows 200000 --runs 1
    python bench/import_subscribers.py --database postgresql+psycopg://postgres@127.0.0.1:5432/postgres

The file mixes the shapes a real export has: 09x, +84, 84x and old 11-digit numbers, spaces
and dots, an area code, a name and two attributes, ~1% invalid numbers and ~1% repeats.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PREFIXES = ["32", "33", "34", "35", "36", "37", "38", "39", "70", "76", "77", "78", "79", "81", "82", "83", "84",
            "85", "86", "88", "89", "90", "91", "93", "94", "96", "97", "98", "56", "58", "59"]
OLD = ["120", "121", "122", "126", "128", "123", "124", "125", "127", "129", "162", "163", "164", "165", "166",
       "167", "168", "169", "186", "188", "199"]
AREAS = 12


def make_csv(path: Path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["phone", "area_code", "name", "age", "group"])
        for i in range(n):
            r = rng.random()
            if r < 0.01:
                phone = f"0{rng.randint(200, 299)}{rng.randint(0, 9999999):07d}"     # landline
            elif r < 0.02 and i > 10:
                phone = f"0{rng.choice(PREFIXES)}{(i - 7) % 10_000_000:07d}"           # a repeat, roughly
            elif r < 0.06:
                phone = f"0{rng.choice(OLD)}{rng.randint(0, 9999999):07d}"            # pre-2018
            else:
                p, rest = rng.choice(PREFIXES), f"{rng.randint(0, 9999999):07d}"
                phone = rng.choice((f"0{p}{rest}", f"+84{p}{rest}", f"84{p}{rest}", f"0{p} {rest[:3]} {rest[3:]}",
                                    f"0{p}.{rest[:3]}.{rest[3:]}"))
            w.writerow([phone, f"D{2 + i % AREAS}", f"Nguyễn Văn {i}", rng.randint(16, 90),
                        rng.choice(("a", "b", "c"))])


def make_areas(path: Path) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["code", "name", "parent"])
        w.writerow(["P", "Province", ""])
        for i in range(2, 2 + AREAS):
            w.writerow([f"D{i}", f"District {i}", "P"])


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    """This process's CPU time: on a shared machine it moves less with the others' load than wall time."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- what each child process does --------------------------------------------------

def child_floor(csv_path: Path) -> dict:
    import phonenumbers

    start, cpu = time.perf_counter(), cpu_seconds()
    n = 0
    with csv_path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        next(reader)
        for row in reader:
            n += 1
            try:
                num = phonenumbers.parse(row[0], "VN")
            except phonenumbers.NumberParseException:
                continue
            phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)
    return {"rows": n, "seconds": time.perf_counter() - start, "cpu": cpu_seconds() - cpu}


def _fresh_database(url: str, folder: Path, tag: str) -> str:
    from loa import db

    if url == "sqlite":
        url = f"sqlite:///{folder / f'{tag}.db'}"
        Path(url.removeprefix("sqlite:///")).unlink(missing_ok=True)
    engine = db.make_engine(url)
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP SCHEMA IF EXISTS loa_bench CASCADE")
            conn.exec_driver_sql("CREATE SCHEMA loa_bench")
        engine.dispose()
        engine = db.make_engine(url, connect_args={"options": "-csearch_path=loa_bench"})
    db.create_schema(engine)
    engine.dispose()
    return url


def _engine(url: str):
    from loa import db

    if url.startswith("postgresql"):
        return db.make_engine(url, connect_args={"options": "-csearch_path=loa_bench"})
    return db.make_engine(url)


def child_loa(csv_path: Path, areas_path: Path, url: str, folder: Path) -> dict:
    from loa.importer import AreasHandler, SubscribersHandler, run_import

    url = _fresh_database(url, folder, "loa")
    engine = _engine(url)
    run_import(engine, AreasHandler(engine, areas_path), areas_path)
    start, cpu = time.perf_counter(), cpu_seconds()
    summary = run_import(engine, SubscribersHandler(engine, csv_path), csv_path,
                         rejects_path=folder / "rejects.csv")
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    engine.dispose()
    return {"cpu": cpu, "rows": summary.read, "imported": summary.imported, "new": summary.new, "rejected": summary.rejected,
            "seconds": seconds}


def child_copy(rows_path: Path, areas_path: Path, url: str, folder: Path) -> dict:
    """Raw COPY of the already normalised rows into the subscribers table (same indexes)."""
    from loa.importer import AreasHandler, run_import

    _fresh_database(url, folder, "copy")
    engine = _engine(url)
    run_import(engine, AreasHandler(engine, areas_path), areas_path)
    rows = json.loads(rows_path.read_text())
    now = datetime.now(UTC)
    raw = engine.raw_connection()
    try:
        start = time.perf_counter()
        with raw.cursor() as cur, cur.copy("COPY subscribers (phone, carrier, area_id, name, language, attributes, created_at, "
                          "updated_at) FROM STDIN") as copy:
            for phone, carrier, area_id, name, attributes in rows:
                copy.write_row((phone, carrier, area_id, name, "vi", attributes, now, now))
        raw.commit()
        seconds = time.perf_counter() - start
    finally:
        raw.close()
        engine.dispose()
    return {"rows": len(rows), "seconds": seconds}


def normalised_rows(csv_path: Path, out: Path) -> int:
    """The rows loa would write, computed once (not timed) for the COPY floor."""
    from loa.phones import PhoneError, normalize

    seen: dict[str, list] = {}
    with csv_path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        next(reader)
        for phone, area, name, age, group in reader:
            try:
                p = normalize(phone)
            except PhoneError:
                continue
            seen[p.e164] = [p.e164, p.carrier, int(area[1:]), name,
                            json.dumps({"age": int(age), "group": group})]
    out.write_text(json.dumps(list(seen.values())))
    return len(seen)


def run_child(*args: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=False,
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    if proc.returncode:
        raise SystemExit(f"child {args[0]} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--database", default="sqlite", help="'sqlite' (a fresh file) or a PostgreSQL URL")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        what, *rest = args.child
        result = {"floor": lambda: child_floor(Path(rest[0])),
                  "loa": lambda: child_loa(Path(rest[0]), Path(rest[1]), rest[2], Path(rest[3])),
                  "copy": lambda: child_copy(Path(rest[0]), Path(rest[1]), rest[2], Path(rest[3]))}[what]()
        result["peak_mb"] = peak_rss_mb()
        print(json.dumps(result))
        return 0
    with tempfile.TemporaryDirectory(prefix="loa-bench-import-") as tmp:
        folder = Path(tmp)
        csv_path, areas_path = folder / "subscribers.csv", folder / "areas.csv"
        make_csv(csv_path, args.rows, args.seed)
        make_areas(areas_path)
        pg = args.database.startswith("postgresql")
        if pg:
            normalised_rows(csv_path, folder / "rows.json")
        print(f"rows {args.rows:,} on {'PostgreSQL' if pg else 'SQLite'}; each figure in its own process, "
              "baseline and loa taking turns")
        for i in range(1, args.runs + 1):
            floor = run_child("floor", str(csv_path))
            loa = run_child("loa", str(csv_path), str(areas_path), args.database, str(folder))
            line = (f"run {i}: floor {floor['rows'] / floor['seconds']:>9,.0f} rows/s   "
                    f"loa {loa['rows'] / loa['seconds']:>9,.0f} rows/s ({loa['seconds']:.1f} s, "
                    f"{loa['new']:,} new, {loa['rejected']:,} rejected, peak {loa['peak_mb']:.0f} MB)   "
                    f"loa/floor {floor['seconds'] / loa['seconds']:.2f}x wall, "
                    f"{floor['cpu'] / loa['cpu']:.2f}x CPU")
            if pg:
                copy = run_child("copy", str(folder / "rows.json"), str(areas_path), args.database, str(folder))
                line += (f"   raw COPY {copy['rows'] / copy['seconds']:>9,.0f} rows/s   "
                         f"loa/COPY {copy['seconds'] / loa['seconds']:.2f}x")
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
