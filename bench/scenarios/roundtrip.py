"""One-operation push round trip, against a bare pika request/reply of the same size."""

from __future__ import annotations

import os

from sqlalchemy.orm import Session

from bench.bare import BareRequester
from bench.direct import insert_changes
from bench.harness import Measurement, Run, at_most, compare, scenario
from bench.models import Item, item_row
from bench.servers import DatabaseKind, WorkerThread, new_client, new_server
from bench.services import Services
from dbsync_mq.core import messages, signing
from dbsync_mq.core.changeset import encode_changes
from dbsync_mq.core.messages import Reply, Request


def push_sizes() -> tuple[int, int]:
    """Bytes of a signed one-row push and of its signed reply, as dbsync-mq sends them."""
    key = signing.private_key_from_seed(os.urandom(signing.SEED_BYTES))
    rid = "0" * 32
    body = {"base": 1000, "changes": encode_changes(insert_changes([item_row(1000)], 1 << 50))}
    request = Request(messages.PUSH, 7, rid, 1 << 40, body)
    reply = Reply(rid, 1 << 40, body={"version": 1001, "base": 1000})
    return (
        len(signing.seal(messages.encode_request(request), key)),
        len(signing.seal(messages.encode_reply(reply), key)),
    )


class RoundTripBench:
    """A worker (thread) on a fresh server, one registered node, and the bare pair."""

    def __init__(self, services: Services, kind: DatabaseKind) -> None:
        self.setup = new_server(services, kind)
        self.worker = WorkerThread(self.setup)
        self.worker.start()
        self.client = new_client(self.setup, "roundtrip", timeout=10)
        self.bare = BareRequester(
            services, self.setup.namespace, self.setup.database_url, push_sizes()
        )
        self._next_key = 1

    def write_one(self) -> None:
        with Session(self.client.engine) as session:
            session.add(Item(**item_row(self._next_key)))
            session.commit()
        self._next_key += 1

    def ours(self) -> None:
        if self.client.push().operations != 1:
            raise RuntimeError("the push did not carry exactly one operation")

    def close(self) -> None:
        self.bare.close()
        self.client.close()
        self.client.engine.dispose()
        self.worker.stop()


def _measure(run: Run, kind: DatabaseKind, label: str) -> Measurement:
    bench = RoundTripBench(run.services, kind)
    repeat = run.pick(15, 60)
    try:
        ours, baseline = compare(
            bench.ours, bench.bare.call, repeat, before_ours=bench.write_one, warmup=3
        )
    finally:
        bench.close()
    request, reply = push_sizes()
    return Measurement(
        f"1-operation push round trip, {label} server: client.push() vs bare pika req/reply",
        ours * 1000,
        baseline * 1000,
        "ms",
        at_most(1.5),
        note=f"median of {repeat}; request {request} B, reply {reply} B; worker in a thread",
    )


@scenario("roundtrip")
def round_trip(run: Run) -> list[Measurement]:
    """1-operation push round trip (PostgreSQL and SQLite servers) vs bare pika."""
    return [_measure(run, "postgresql", "PG"), _measure(run, "sqlite", "SQLite")]
