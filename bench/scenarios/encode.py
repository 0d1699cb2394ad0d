"""The client side of a 10,000-row push: preparing the message, and its size on the wire.

``ours`` is the client's own prepare step (``SyncClient._prepare_push``: read
the unpushed operations, compress them, attach the current rows, encode, sign,
and record the push as in flight) followed by publishing the body (confirmed,
to the namespace's push queue, where no worker consumes it), on a node whose
log holds one insert per row. The baseline is ``msgpack.packb`` of the same
rows (as dictionaries, read beforehand); the size baseline is the same rows as
compact JSON.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import os
import sqlite3
import time
import uuid
from typing import Any

import msgpack
import sqlalchemy as sa
from sqlalchemy.orm import Session

from bench.harness import Measurement, Run, at_most, compare, median, scenario, timed
from bench.models import ITEM, Item, item_rows
from bench.services import Services
from dbsync_mq import SyncClient
from dbsync_mq.core import messages, signing
from dbsync_mq.core.changeset import encode_changes
from dbsync_mq.core.compression import compress_local
from dbsync_mq.core.messages import Request
from dbsync_mq.outbox import attach_rows
from dbsync_mq.runtime import collector_paused
from dbsync_mq.storage import local
from dbsync_mq.storage.engine import read_transaction, write_transaction
from dbsync_mq.transport.base import Message
from dbsync_mq.transport.node import BrokerClient
from dbsync_mq.transport.rabbitmq import connect, declare_topology
from dbsync_mq.transport.topology import Topology


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    raise TypeError(type(value).__name__)


class EncodeBench:
    """A node whose log holds ``size`` inserts, with an identity but no worker behind it."""

    def __init__(self, services: Services, size: int) -> None:
        self.namespace = services.namespace()
        self.topology = Topology(self.namespace)
        connection = connect(services.broker_url)
        try:
            declare_topology(connection.channel(), self.topology)
        finally:
            connection.close()
        url = services.sqlite_database("encode")
        self.path = sa.make_url(url).database or ""
        engine = sa.create_engine(url)
        self.client = SyncClient(
            engine, broker_url=services.broker_url, namespace=self.namespace, models=[Item]
        )
        self.client.install()
        self.identity = local.Identity(1, self.namespace, os.urandom(32), os.urandom(32), 0, 0)
        with write_transaction(engine) as connection:
            local.save_identity(connection, self.identity)
        with Session(engine) as session:
            session.execute(sa.insert(Item), item_rows(1, size))
            session.commit()
        with engine.connect() as connection:
            self.rows = [dict(row) for row in connection.execute(sa.select(ITEM)).mappings()]
        self.broker = BrokerClient(services.broker_url, self.topology)
        self.body = b""

    def ours(self) -> None:
        """Prepare the push with the client's own code, then publish it (confirmed)."""
        # No public hook runs the prepare step alone: call the client's own method.
        prepared = self.client._prepare_push(None)
        if not isinstance(prepared, tuple):
            raise RuntimeError(f"nothing new to push: {prepared!r}")
        self.body = prepared[0].bodies[0]
        self.publish()

    def forget_inflight(self) -> None:
        with write_transaction(self.client.engine) as connection:
            inflight = local.load_inflight(connection)
            if inflight is not None:
                local.delete_inflight(connection, inflight.request_id)

    def baseline(self) -> None:
        msgpack.packb(self.rows, default=_plain)

    def publish(self) -> None:
        rid = uuid.uuid4().hex
        headers = {"node": "1", "proto": messages.PROTOCOL_VERSION}
        self.broker.publish(Message(self.body, messages.PUSH, rid, rid, headers))

    def floor(self) -> None:
        """What reading the rows costs at the least: plain sqlite3, tuples, then packb."""
        connection = sqlite3.connect(self.path)
        try:
            rows = connection.execute(f"SELECT * FROM {ITEM.name}").fetchall()
        finally:
            connection.close()
        msgpack.packb(rows)

    def json_bytes(self) -> int:
        return len(json.dumps(self.rows, default=_plain, separators=(",", ":")).encode())

    def stages(self) -> dict[str, float]:
        """Seconds of each step of the prepare, timed one by one (for the note)."""
        engine, models = self.client.engine, self.client.models
        spent: dict[str, float] = {}
        gc.collect()
        started = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal started
            now = time.perf_counter()
            spent[name] = now - started
            started = now

        with read_transaction(engine) as connection, collector_paused():  # as the client does
            operations = local.unpushed(connection)
            lap("read ops")
            compressed = compress_local(operations)
            lap("compress")
            changes = attach_rows(connection, models, compressed)
            lap("attach rows")
        body = {"base": 0, "changes": encode_changes(changes)}
        lap("encode")
        request = Request(messages.PUSH, 1, uuid.uuid4().hex, int(time.time() * 1000), body)
        key = signing.private_key_from_seed(self.identity.private_key)
        sealed = signing.seal(messages.encode_request(request), key)
        lap("seal")
        ids = tuple(operation.order for operation in operations)
        with write_transaction(engine) as connection:
            local.save_inflight(connection, local.InFlight(request.request_id, 0, (sealed,), ids))
        lap("record in flight")
        self.publish()
        lap("publish")
        self.forget_inflight()
        return spent

    def close(self) -> None:
        self.broker.close()
        self.client.close()
        self.client.engine.dispose()


@scenario("encode")
def encode(run: Run) -> list[Measurement]:
    """Client side of a 10,000-row push: prepare time vs msgpack, bytes vs JSON."""
    size = 10_000
    bench = EncodeBench(run.services, size)
    try:
        ours, baseline = compare(
            bench.ours, bench.baseline, run.repeat, before_ours=bench.forget_inflight
        )
        bench.forget_inflight()
        floor = median(timed(bench.floor) for _ in range(run.repeat))
        stages = [bench.stages() for _ in range(run.repeat)]
        json_bytes = bench.json_bytes()
    finally:
        bench.close()
    steps = ", ".join(f"{name} {median(s[name] for s in stages) * 1000:.0f}" for name in stages[0])
    return [
        Measurement(
            f"push of {size:,} rows, client side: prepare (read ops … seal) + publish"
            " vs msgpack.packb of the rows",
            ours * 1000,
            baseline * 1000,
            "ms",
            at_most(2),
            note=(
                f"median of {run.repeat}; steps (ms): {steps}. Floor for comparison:"
                f" plain sqlite3 SELECT of the rows + packb = {floor * 1000:.0f} ms"
            ),
        ),
        Measurement(
            f"push of {size:,} rows, bytes on the wire vs the rows as compact JSON",
            len(bench.body),
            json_bytes,
            "B",
            at_most(0.6),
            note="the signed envelope as published",
        ),
    ]
