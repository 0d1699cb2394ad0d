"""``python -m bench [--quick] [--json out.json] [--only NAME ...]``.

Exit code 0 when every scenario ran (targets missed or not), 1 when one crashed,
2 on bad arguments.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import shlex
import sys
import time
import traceback
from pathlib import Path

import bench.scenarios  # noqa: F401  (registers every scenario)
from bench.harness import SCENARIOS, Measurement, Run
from bench.report import print_table, write_json
from bench.services import Services

RET_OK = 0
RET_CRASHED = 1


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repetitions")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    parser.add_argument(
        "--only",
        action="append",
        choices=list(SCENARIOS),
        metavar="NAME",
        help=f"run only this scenario (repeatable): {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--nodes", type=int, help="nodes of the fleet scenario (default 200; 40 with --quick)"
    )
    return parser.parse_args(argv)


def run_scenarios(run: Run, names: list[str]) -> tuple[list[tuple[str, Measurement]], bool]:
    """Run the named scenarios; their rows (each with its scenario's name), and whether one
    crashed (its row then says so)."""
    rows: list[tuple[str, Measurement]] = []
    crashed = False
    for name in names:
        entry = SCENARIOS[name]
        run.log(f"[{time.strftime('%H:%M:%S')}] {name}: {entry.summary}")
        started = time.monotonic()
        try:
            result = entry.function(run)
        except Exception as exc:
            crashed = True
            traceback.print_exc()
            crash = Measurement(entry.summary, None, None, "", note=f"crashed: {exc!r}")
            rows.append((name, crash))
            continue
        rows.extend((name, row) for row in (result if isinstance(result, list) else [result]))
        run.log(f"    done in {time.monotonic() - started:.0f} s")
    return rows, crashed


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    names = [name for name in SCENARIOS if not args.only or name in args.only]
    started = time.monotonic()
    when = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    with Services() as services:
        rows, crashed = run_scenarios(
            Run(quick=args.quick, services=services, log=progress, nodes=args.nodes), names
        )
    elapsed = time.monotonic() - started
    command = shlex.join(["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)])
    mode = "quick" if args.quick else "full"
    title = f"dbsync-mq benchmarks ({mode}) — {when} — {elapsed:.0f} s — `{command}`"
    print_table([row for _name, row in rows], title)
    if args.json is not None:
        meta = {"date": when, "command": command, "mode": mode, "seconds": round(elapsed, 1)}
        write_json(args.json, rows, meta)
    return RET_CRASHED if crashed else RET_OK


if __name__ == "__main__":
    sys.exit(main())
