"""Pull and repair replies are cut by size: no message larger than the worker's limit."""

from __future__ import annotations

import os

import pytest

from dbsync_mq.config import ServerSettings
from tests.conftest import table_rows, write
from tests.models import City

pytestmark = pytest.mark.broker

REPLY_BYTES = 160 * 1024
ROWS = 4000


@pytest.fixture
def server_settings() -> ServerSettings:
    return ServerSettings(reply_bytes=REPLY_BYTES)


def _record_reply_sizes(node) -> list[int]:
    """The size of every message the node receives from now on."""
    sizes: list[int] = []
    broker = node._broker
    replies = broker._replies

    def recording(*args):
        for message in replies(*args):
            sizes.append(len(message.body))
            yield message

    broker._replies = recording
    return sizes


def test_a_large_pull_comes_in_replies_no_larger_than_the_limit(make_node, worker, probe):
    # Given a server holding about 400 KB of rows that do not deflate
    writer, reader = make_node("writer"), make_node("reader")
    write(writer.engine, *(City(name=os.urandom(48).hex()) for _ in range(ROWS)))
    writer.sync()
    sizes = _record_reply_sizes(reader)

    # When another node pulls them
    assert reader.pull().changes == ROWS

    # Then they came in several replies, none larger than the limit
    assert len(sizes) >= 2
    assert max(sizes) <= REPLY_BYTES
    assert table_rows(reader.engine) == probe.rows()


def test_a_large_repair_comes_in_replies_no_larger_than_the_limit(make_node, worker, probe):
    # Given the same rows on the server
    writer, reader = make_node("writer"), make_node("reader")
    write(writer.engine, *(City(name=os.urandom(48).hex()) for _ in range(ROWS)))
    writer.sync()
    sizes = _record_reply_sizes(reader)

    # When another node repairs
    assert reader.repair().rows == ROWS

    # Then the snapshot came in several replies, none larger than the limit
    assert len(sizes) >= 2
    assert max(sizes) <= REPLY_BYTES
    assert table_rows(reader.engine) == probe.rows()
