"""RabbitMQ's management HTTP API: queues, consumers, users and permissions of a vhost.

The API is a plugin (``rabbitmq_management``), reached over HTTP with the
standard library only. By default it is found on the broker's host, port
15672, with the broker URL's credentials and virtual host. Failures are ours:
``BrokerUnavailable`` when the API does not answer, ``ConfigurationError`` when
it refuses (bad credentials, a user without the ``management`` tag).

Its figures are the broker's statistics, refreshed every few seconds (5 s by
default): depths read here may lag what AMQP's passive declare tells at once.
"""

from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from dbsync_mq.errors import BrokerUnavailable, ConfigurationError
from dbsync_mq.transport.topology import Permissions

MANAGEMENT_PORT: Final = 15672
"""The management plugin's default HTTP port."""

PAGE_SIZE: Final = 500
"""Items per request (the API's largest page)."""

TIMEOUT_SECONDS: Final = 10.0
"""Longest wait for one answer of the API."""

Kind = Literal["queues", "exchanges"]

_QUEUE_COLUMNS: Final = (
    "name",
    "messages_ready",
    "messages_unacknowledged",
    "consumers",
    "message_stats.publish_details.rate",
    "message_stats.deliver_get_details.rate",
)


@dataclass(frozen=True)
class QueueStats:
    """One queue as the management API sees it (rates in messages per second)."""

    name: str
    ready: int
    unacknowledged: int
    consumers: int
    publish_rate: float
    deliver_rate: float


@dataclass(frozen=True)
class ConsumerInfo:
    """One consumer: the queue it reads and the connection it belongs to."""

    queue: str
    connection: str
    user: str
    peer: str


class ManagementApi:
    """Calls to the management API, in the virtual host of ``broker_url``.

    ``credentials`` (``"user:password"``) override the broker URL's, for an
    administrator acting on another user's virtual host (``deploy/rabbitmq/users.py``).
    """

    def __init__(
        self, broker_url: str, api_url: str | None = None, *, credentials: str | None = None
    ) -> None:
        broker = urllib.parse.urlsplit(broker_url)
        host = broker.hostname or "localhost"
        host = f"[{host}]" if ":" in host else host
        api = urllib.parse.urlsplit(api_url or f"http://{host}:{MANAGEMENT_PORT}/")
        address = api.netloc.rpartition("@")[2]
        path = api.path.rstrip("/").removesuffix("/api")
        self.base = f"{api.scheme}://{address}{path}/api"
        if credentials is None:
            username = urllib.parse.unquote(api.username or broker.username or "guest")
            password = urllib.parse.unquote(api.password or broker.password or "guest")
            credentials = f"{username}:{password}"
        self._auth = "Basic " + base64.b64encode(credentials.encode()).decode()
        self.vhost = urllib.parse.unquote(broker.path[1:]) if len(broker.path) > 1 else "/"

    # --- reading ----------------------------------------------------------------------

    def names(self, kind: Kind, pattern: str) -> list[str]:
        """Names of the ``kind`` of the virtual host that the regular expression
        ``pattern`` matches whole (kept simple: the broker and Python both read it)."""
        found = [item["name"] for item in self._items(kind, pattern, ("name",))]
        return [name for name in found if re.fullmatch(pattern, name)]

    def queues(self, pattern: str) -> list[QueueStats]:
        """Depth, consumers and rates of the queues whose name ``pattern`` matches whole."""
        stats = []
        for item in self._items("queues", pattern, _QUEUE_COLUMNS):
            if not re.fullmatch(pattern, item["name"]):
                continue
            rates = item.get("message_stats") or {}
            stats.append(
                QueueStats(
                    name=item["name"],
                    ready=int(item.get("messages_ready") or 0),
                    unacknowledged=int(item.get("messages_unacknowledged") or 0),
                    consumers=int(item.get("consumers") or 0),
                    publish_rate=_rate(rates, "publish_details"),
                    deliver_rate=_rate(rates, "deliver_get_details"),
                )
            )
        return stats

    def consumers(self, queue: str) -> list[ConsumerInfo]:
        """The consumers of ``queue`` (none if there is no such queue)."""
        path = f"/queues/{_quote(self.vhost)}/{_quote(queue)}?columns=consumer_details"
        answer = self.call("GET", path) or {}
        consumers = []
        for item in answer.get("consumer_details") or ():
            channel = item.get("channel_details") or {}
            consumers.append(
                ConsumerInfo(
                    queue=queue,
                    connection=str(channel.get("connection_name", "")),
                    user=str(channel.get("user", "")),
                    peer=f"{channel.get('peer_host', '')}:{channel.get('peer_port', '')}",
                )
            )
        return consumers

    def connection_label(self, connection: str) -> str | None:
        """The name a client gave its connection (``connection_name``), if any.

        A consumer whose channel is closing is listed without its connection's name:
        ``/connections/`` would then be the list of every connection.
        """
        if not connection:
            return None
        answer = self.call("GET", f"/connections/{_quote(connection)}")
        if not isinstance(answer, dict):
            return None
        label = answer.get("user_provided_name") or (
            (answer.get("client_properties") or {}).get("connection_name")
        )
        return str(label) if label else None

    def _items(self, kind: Kind, pattern: str, columns: tuple[str, ...]) -> Iterator[Any]:
        page, pages = 1, 1
        while page <= pages:
            query = urllib.parse.urlencode(
                {
                    "page": page,
                    "page_size": PAGE_SIZE,
                    "name": f"^(?:{pattern})$",
                    "use_regex": "true",
                    "columns": ",".join(columns),
                }
            )
            answer = self.call("GET", f"/{kind}/{_quote(self.vhost)}?{query}")
            if answer is None:  # no such virtual host: nothing in it
                return
            yield from answer["items"]
            pages = int(answer["page_count"])
            page += 1

    # --- users and permissions --------------------------------------------------------

    def put_user(self, name: str, password: str, tags: str = "") -> None:
        self.call("PUT", f"/users/{_quote(name)}", {"password": password, "tags": tags})

    def put_permissions(self, vhost: str, name: str, permissions: Permissions) -> None:
        body = {
            "configure": permissions.configure,
            "write": permissions.write,
            "read": permissions.read,
        }
        self.call("PUT", f"/permissions/{_quote(vhost)}/{_quote(name)}", body)

    def delete_user(self, name: str) -> None:
        self.call("DELETE", f"/users/{_quote(name)}")

    # --- the transport ----------------------------------------------------------------

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """One request; the decoded JSON answer, ``None`` for 404 or an empty answer."""
        request = urllib.request.Request(
            self.base + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": self._auth, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
                data = response.read()
            return json.loads(data) if data else None
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise ConfigurationError(
                f"RabbitMQ management API at {self.base} refused: {exc.code} {exc.reason}"
            ) from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise BrokerUnavailable(
                f"RabbitMQ management API at {self.base} not reachable: {reason}"
            ) from exc
        except ValueError as exc:
            raise ConfigurationError(
                f"RabbitMQ management API at {self.base} answered something else than JSON"
            ) from exc


def _quote(part: str) -> str:
    return urllib.parse.quote(part, safe="")


def _rate(stats: Mapping[str, Any], name: str) -> float:
    details = stats.get(name) or {}
    return float(details.get("rate") or 0.0)
