"""Serve request messages in a process of their own, and measure the last one.

::

    python -m tests.security.handle_child SERVER_DB MESSAGES INDEX

``MESSAGES`` is a file holding a pickled list of ``Message``, served in order
by one ``Server`` with the default ``ServerSettings``, as a worker does; the
one at ``INDEX`` is measured (those before it warm the process up: imports,
caches, the database connection). Prints one JSON line: ``seconds`` (of
serving the measured message), ``rss_growth_mib`` (the peak RSS while serving
it, above the RSS just before) and ``outcomes``, one per message: its
``disposition`` and its ``replies`` as ``[node id, body in hex]``.
"""

from __future__ import annotations

import json
import pickle
import resource
import sys
import time
from pathlib import Path
from typing import Any

from dbsync_mq.server import Server
from dbsync_mq.storage.models import ModelSet
from dbsync_mq.transport.base import Message
from tests.conftest import MODELS
from worker.process import create_server_engine


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise LookupError(field)


def _reset_peak_rss() -> bool:
    """Make ``VmHWM`` the current RSS again (Linux); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
    except OSError:
        return False
    return True


def _serve(server: Server, message: Message) -> dict[str, Any]:
    outcome = server.handle(message)
    replies = [
        [item.node_id, item.message.body.hex()] for item in outcome.outgoing if not item.event
    ]
    return {"disposition": outcome.disposition, "replies": replies}


def main(database: str, messages: str, index: int) -> None:
    engine = create_server_engine(f"sqlite:///{database}")
    server = Server(engine, ModelSet.in_modules(MODELS))
    batch: list[Message] = pickle.loads(Path(messages).read_bytes())
    outcomes = [_serve(server, message) for message in batch[:index]]
    reset = _reset_peak_rss()
    before = _status_kib("VmRSS")
    started = time.perf_counter()
    outcomes.append(_serve(server, batch[index]))
    seconds = time.perf_counter() - started
    # Without a reset, the peak of the whole life of the process: an overestimate.
    peak = _status_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    outcomes.extend(_serve(server, message) for message in batch[index + 1 :])
    engine.dispose()
    growth = max(0, peak - before) / 1024
    print(json.dumps({"seconds": seconds, "rss_growth_mib": growth, "outcomes": outcomes}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
