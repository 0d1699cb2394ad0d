"""Coverage-guided fuzzing of ``Server.handle`` with atheris, run by hand.

atheris is not a dependency of the project; install it in a virtualenv of your
own (it needs a Python with a matching wheel, or clang to build one)::

    pip install atheris
    python tests/security/fuzz_atheris.py -atheris_runs=1000000 -max_len=4096 corpus/

Every input becomes one request: a raw body, a body signed by a registered
node, or a push or pull whose changes are the input's bytes. A crash is any
exception out of ``Server.handle``, an ``internal-error`` answer, or a database
change that no committed version explains; atheris saves the input that caused
it (``crash-*``), which ``python tests/security/fuzz_atheris.py crash-...``
replays. The pytest suite runs ``Harness.one_input`` on random inputs, so the
harness keeps working even where atheris is not installed.
"""

from __future__ import annotations

import datetime as dt
import sys
import tempfile
from pathlib import Path
from typing import Any

MODES = ("raw", "signed", "push", "pull", "register")


class Harness:
    """A SQLite server database with one registered node, and one request per input."""

    def __init__(self, directory: Path) -> None:
        from dbsync_mq.server import Server, initialize, issue_enrollment
        from dbsync_mq.storage.models import ModelSet
        from tests.conftest import MODELS
        from tests.security.forge import Forge, new_id
        from worker.process import create_server_engine

        self.engine = create_server_engine(f"sqlite:///{directory / 'server.db'}")
        models = ModelSet.in_modules(MODELS)
        initialize(self.engine, models)
        self.server = Server(self.engine, models)
        token = new_id()
        issue_enrollment(self.engine, token, dt.timedelta(hours=1))
        stranger = Forge.stranger()
        [reply] = self.server.handle(stranger.register(token)).outgoing
        self.node = Forge(self._node_id(reply.message.body), stranger.seed)
        self.head = 0

    def _node_id(self, body: bytes) -> int:
        from dbsync_mq.core import messages, signing

        signed, _signature = signing.open_envelope(body, 1 << 20)
        node: int = messages.decode_reply(signed, messages.REGISTER).body["node"]
        return node

    def one_input(self, data: bytes) -> None:
        """Handle the request ``data`` describes; raise if the server misbehaves."""
        from dbsync_mq.server import Outcome

        message = self._message(data)
        before = self._state()
        outcome = self.server.handle(message)
        list(outcome.outgoing)
        if not isinstance(outcome, Outcome) or outcome.code == "internal-error":
            raise AssertionError(f"bad outcome: {outcome!r}")
        if outcome.version is not None:
            self.head = outcome.version
        elif self._state() != before:
            raise AssertionError("the database changed without a committed version")

    def _message(self, data: bytes) -> Any:
        from dbsync_mq.core.changeset import encode_changes
        from tests.security.forge import DIRECT_REPLY_TO, Forge, envelope_message

        mode, payload = MODES[data[0] % len(MODES)] if data else "raw", data[1:]
        if mode == "raw":
            return envelope_message(payload, "push", header=self.node.node_id)
        if mode == "signed":
            return envelope_message(self.node.seal(payload), "push", header=self.node.node_id)
        if mode == "push":
            return self.node.message("push", {"base": self.head, "changes": payload})
        if mode == "pull":
            return self.node.message("pull", {"since": 0, "deleted": payload or encode_changes([])})
        text = payload.decode("utf-8", "replace")
        return Forge.stranger().register(text, reply_to=DIRECT_REPLY_TO)

    def _state(self) -> tuple[Any, ...]:
        import sqlalchemy as sa

        from dbsync_mq.storage import schema

        with self.engine.connect() as connection:
            counts = [
                connection.execute(sa.select(sa.func.count()).select_from(table)).scalar()
                for table in (schema.versions, schema.nodes, schema.requests)
            ]
            return (*counts, connection.execute(sa.select(schema.head.c.version)).scalar())


def main(argv: list[str]) -> None:
    import atheris  # type: ignore[import-not-found]

    harness = Harness(Path(tempfile.mkdtemp(prefix="dbsync-atheris-")))
    atheris.instrument_all()
    atheris.Setup(argv, harness.one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    main(sys.argv)
