"""RabbitMQ's management HTTP API: which queues and exchanges a virtual host holds.

The API is a plugin (``rabbitmq_management``), reached over HTTP with the
standard library only. By default it is found on the broker's host, port
15672, with the broker URL's credentials and virtual host. Failures are ours:
``BrokerUnavailable`` when the API does not answer, ``ConfigurationError`` when
it refuses (bad credentials, a user without the ``management`` tag).
"""

from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Final, Literal

from dbsync_mq.errors import BrokerUnavailable, ConfigurationError

MANAGEMENT_PORT: Final = 15672
"""The management plugin's default HTTP port."""

PAGE_SIZE: Final = 500
"""Names per request (the API's largest page)."""

TIMEOUT_SECONDS: Final = 10.0
"""Longest wait for one answer of the API."""

Kind = Literal["queues", "exchanges"]


class ManagementApi:
    """Read-only calls to the management API of one virtual host."""

    def __init__(self, broker_url: str, api_url: str | None = None) -> None:
        broker = urllib.parse.urlsplit(broker_url)
        host = broker.hostname or "localhost"
        host = f"[{host}]" if ":" in host else host
        api = urllib.parse.urlsplit(api_url or f"http://{host}:{MANAGEMENT_PORT}/")
        address = api.netloc.rpartition("@")[2]
        self.base = f"{api.scheme}://{address}{api.path.rstrip('/')}/api"
        username = api.username or broker.username or "guest"
        password = api.password or broker.password or "guest"
        credentials = f"{urllib.parse.unquote(username)}:{urllib.parse.unquote(password)}"
        self._auth = "Basic " + base64.b64encode(credentials.encode()).decode()
        self.vhost = urllib.parse.unquote(broker.path[1:]) if len(broker.path) > 1 else "/"

    def names(self, kind: Kind, pattern: str) -> list[str]:
        """Names of the ``kind`` of the virtual host that the regular expression
        ``pattern`` matches whole (kept simple: the broker and Python both read it)."""
        found: list[str] = []
        page, pages = 1, 1
        while page <= pages:
            query = urllib.parse.urlencode(
                {
                    "page": page,
                    "page_size": PAGE_SIZE,
                    "name": f"^(?:{pattern})$",
                    "use_regex": "true",
                    "columns": "name",
                }
            )
            answer = self._get(f"/{kind}/{urllib.parse.quote(self.vhost, safe='')}?{query}")
            if answer is None:  # no such virtual host: nothing in it
                return []
            found += [item["name"] for item in answer["items"]]
            pages = int(answer["page_count"])
            page += 1
        return [name for name in found if re.fullmatch(pattern, name)]

    def _get(self, path: str) -> Any:
        request = urllib.request.Request(self.base + path, headers={"Authorization": self._auth})
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
                return json.loads(response.read())
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
