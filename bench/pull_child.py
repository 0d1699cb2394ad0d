"""The pulling client, run in a subprocess so that its peak RSS is its own.

::

    python -m bench.pull_child ours DB_PATH BROKER_URL NAMESPACE
    python -m bench.pull_child phases DB_PATH BROKER_URL NAMESPACE
    python -m bench.pull_child push DB_PATH BROKER_URL NAMESPACE
    python -m bench.pull_child baseline DB_PATH SIZE

Prints one JSON line: ``seconds`` (of the pull, or of the baseline's
``executemany`` and commit), ``rss_mib`` (peak RSS of the process, ``VmHWM``) and
``rss_before_mib`` (peak RSS before the measured part began). ``phases`` adds
the RSS after the replies were collected and after the merge (for profiling:
it wraps two private methods of the client to observe them).
"""

from __future__ import annotations

import json
import resource
import sqlite3
import sys
import time
from typing import Any

PULL_TIMEOUT_SECONDS = 600.0


def _peak_rss_mib() -> float:
    """This process's peak RSS. ``VmHWM`` is reset by ``exec``; ``ru_maxrss`` is not (it
    would count the parent's RSS at ``fork``), so it is only the fallback."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _rss_now_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _watch_phases(client: Any, marks: dict[str, float]) -> None:
    for name in ("_merge",):
        original = getattr(client, name)

        def wrapped(*args: Any, _original: Any = original, _name: str = name) -> Any:
            result = _original(*args)
            marks[f"rss after {_name} mib"] = _rss_now_mib()
            marks[f"peak after {_name} mib"] = _peak_rss_mib()
            return result

        setattr(client, name, wrapped)


def _client(path: str, broker_url: str, namespace: str) -> Any:
    """The node on the SQLite file at ``path`` (imported here: the baseline needs none of it)."""
    import sqlalchemy as sa

    from bench.models import Item
    from dbsync_mq import SyncClient

    return SyncClient(
        sa.create_engine(f"sqlite:///{path}"),
        broker_url=broker_url,
        namespace=namespace,
        models=[Item],
        timeout=PULL_TIMEOUT_SECONDS,
    )


def pull(path: str, broker_url: str, namespace: str, phases: bool = False) -> dict[str, float]:
    client = _client(path, broker_url, namespace)
    marks: dict[str, float] = {}
    if phases:
        _watch_phases(client, marks)
    before = _peak_rss_mib()
    started = time.perf_counter()
    result = client.pull()
    seconds = time.perf_counter() - started
    client.close()
    return {"seconds": seconds, "changes": result.changes, "rss_before_mib": before, **marks}


def repair(path: str, broker_url: str, namespace: str) -> dict[str, float]:
    client = _client(path, broker_url, namespace)
    before = _peak_rss_mib()
    started = time.perf_counter()
    result = client.repair()
    seconds = time.perf_counter() - started
    client.close()
    return {"seconds": seconds, "changes": result.rows, "rss_before_mib": before}


def push(path: str, broker_url: str, namespace: str) -> dict[str, float]:
    """Push every pending operation of the node at ``path`` (a sync: push, then pull)."""
    client = _client(path, broker_url, namespace)
    before = _peak_rss_mib()
    started = time.perf_counter()
    result = client.sync()
    seconds = time.perf_counter() - started
    client.close()
    return {"seconds": seconds, "changes": result.pushed, "rss_before_mib": before}


def baseline(path: str, size: int) -> dict[str, float]:
    from bench.models import COLUMNS, item_rows  # columns in the order of item_row

    rows = [
        tuple(value.isoformat(" ") if name == "created" else value for name, value in row.items())
        for row in item_rows(1, size)
    ]
    connection = sqlite3.connect(path)
    connection.execute(
        "CREATE TABLE bench_item (id INTEGER PRIMARY KEY AUTOINCREMENT, name VARCHAR(64) NOT NULL,"
        " quantity INTEGER NOT NULL, price FLOAT NOT NULL, created DATETIME NOT NULL,"
        " note VARCHAR(200))"
    )
    connection.commit()
    before = _peak_rss_mib()
    started = time.perf_counter()
    connection.executemany(
        f"INSERT INTO bench_item ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
        rows,
    )
    connection.commit()
    seconds = time.perf_counter() - started
    connection.close()
    return {"seconds": seconds, "changes": size, "rss_before_mib": before}


def main(argv: list[str]) -> int:
    mode, path, *rest = argv
    if mode in ("ours", "phases"):
        result = pull(path, rest[0], rest[1], phases=mode == "phases")
    elif mode == "repair":
        result = repair(path, rest[0], rest[1])
    elif mode == "push":
        result = push(path, rest[0], rest[1])
    else:
        result = baseline(path, int(rest[0]))
    print(json.dumps({**result, "rss_mib": _peak_rss_mib()}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
