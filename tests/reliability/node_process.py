"""A node in a process of its own, for tests that kill it.

    python -m tests.reliability.node_process DB_PATH BROKER_URL NAMESPACE ACTION

ACTION is ``push``, ``sync``, ``pull`` or ``sync-loop:PREFIX:COUNT`` (COUNT times: write a
city named PREFIX-i, then sync). Prints the result as one JSON line, with the
pushes the node saw accepted (``[request id, version]``); the node must already be
registered. The line also gives the process's peak memory (``rss_mib``).
"""

from __future__ import annotations

import json
import os
import sys

import sqlalchemy as sa
from sqlalchemy.orm import Session

from dbsync_mq import SyncClient
from tests.models import TRACKED, City
from tests.reliability.accepted import AcceptedPushes

TIMEOUT_SECONDS = float(os.environ.get("DBSYNC_TEST_NODE_TIMEOUT", "30"))


def peak_rss_mib(pid: int | str = "self") -> float:
    """A process's peak resident memory (``VmHWM``), in MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc: peak memory is measured on Linux only")


def main(argv: list[str]) -> int:
    path, broker_url, namespace, action = argv
    engine = sa.create_engine(f"sqlite:///{path}")
    client = SyncClient(
        engine, broker_url=broker_url, namespace=namespace, models=TRACKED, timeout=TIMEOUT_SECONDS
    )
    accepted = AcceptedPushes()
    accepted.watch(client)
    try:
        if action == "push":
            pushed = client.push()
            result = {"version": pushed.version, "pushed": pushed.operations}
        elif action.startswith("sync-loop:"):
            _, prefix, count = action.split(":")
            total = 0
            for index in range(int(count)):
                with Session(engine) as session:
                    session.add(City(name=f"{prefix}-{index}"))
                    session.commit()
                total += client.sync().pushed
            result = {"version": client.version, "pushed": total}
        elif action == "pull":
            pulled = client.pull()
            result = {"version": pulled.version, "pulled": pulled.changes}
        else:
            synced = client.sync()
            result = {"version": synced.version, "pushed": synced.pushed}
        result["accepted"] = [[push.request_id, push.version] for push in accepted.pushes]
        result["rss_mib"] = peak_rss_mib()
        print(json.dumps(result))
    finally:
        client.close()
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
