"""The management API client against the real broker's management plugin."""

from __future__ import annotations

import pika
import pytest

from dbsync_mq.transport.management import ManagementApi
from tests.reliability.conftest import wait_until

pytestmark = pytest.mark.broker


def test_the_label_of_a_connection_without_a_name_is_none(broker_url):
    # Given the management API, and a connection open (a consumer whose channel is gone
    # is listed without the name of its connection)
    api = ManagementApi(broker_url)
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        wait_until(lambda: bool(api.call("GET", "/connections")), 30, "a listed connection")
        # When asked for the label of a connection named "" (the path then names the
        # list of every connection) or of one that does not exist
        # Then there is none, and no error
        assert api.connection_label("") is None
        assert api.connection_label("127.0.0.1:1 -> 127.0.0.1:5672") is None
    finally:
        connection.close()
