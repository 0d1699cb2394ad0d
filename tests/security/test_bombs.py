"""A validly signed body of a few kilobytes built to blow up the decoder is refused quickly,
in little memory, measured in the process that serves it.

Each bomb of ``cases.BOMBS`` is served by ``Server.handle`` in a fresh
subprocess with the worker's default limits, between genuine requests: one
before it warms the process up, a push after it must be applied. Through the
broker, the same bombs run as the ``bomb`` category of ``test_bad_requests.py``:
each is answered or dead-lettered, and a genuine sync works afterwards.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dbsync_mq.core import messages
from dbsync_mq.core.model import INSERT, Change
from dbsync_mq.transport.base import Message
from tests.security import cases
from tests.security.conftest import Answer, Direct, answer_of, expected_answer, read_reply

ROOT = Path(__file__).resolve().parents[2]
MAX_BODY_BYTES = 10_000
MAX_SECONDS = 0.5
MAX_RSS_GROWTH_MIB = 50.0
CHILD_TIMEOUT_SECONDS = 300.0


def serve_in_a_fresh_process(
    direct: Direct, tmp_path: Path, batch: list[Message], index: int
) -> Any:
    """Serve ``batch`` in ``tests.security.handle_child``, measuring ``batch[index]``."""
    database = direct.probe.url.removeprefix("sqlite:///")
    path = tmp_path / "messages.pickle"
    path.write_bytes(pickle.dumps(batch))
    done = subprocess.run(
        [sys.executable, "-m", "tests.security.handle_child", database, str(path), str(index)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_SECONDS,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def answers(direct: Direct, outcome: Any, kind: str) -> list[Answer]:
    """The answers in one served outcome, each verified with the server's key."""
    return [
        answer_of(read_reply(bytes.fromhex(body), direct.server.public_key, kind), node)
        for node, body in outcome["replies"]
    ]


@pytest.mark.parametrize("case", cases.BOMBS, ids=lambda case: case.id)
def test_a_small_signed_bomb_is_refused_in_half_a_second_and_50_mib_and_the_next_push_applies(
    case, direct, tmp_path, ledger, request
):
    # Given a bomb of under 10 KB signed by a registered node, between a ping and a push
    target = direct.target
    bomb = case.build(target)
    assert len(bomb.body) < MAX_BODY_BYTES
    push = target.b.push([Change("city", 50, INSERT, 1, {"id": 50, "name": "after"})], target.head)
    before = direct.probe.snapshot()

    # When a fresh process serves the three, measuring the bomb
    measured = serve_in_a_fresh_process(direct, tmp_path, [target.a.ping(), bomb, push], 1)
    ledger.bad_inputs(request.node.name)
    _ping, refused, pushed = measured["outcomes"]

    # Then the bomb is refused as the case says, quickly and in little memory
    expected = expected_answer(case, bomb)
    if expected is None:
        assert (refused["disposition"], refused["replies"]) == ("dead-letter", [])
    else:
        assert refused["disposition"] == "ack"
        assert answers(direct, refused, bomb.kind) == [expected]
    assert measured["seconds"] < MAX_SECONDS, measured
    assert measured["rss_growth_mib"] < MAX_RSS_GROWTH_MIB, measured

    # And the push after it is applied, and is all that changed
    [answer] = answers(direct, pushed, messages.PUSH)
    assert answer.code == cases.OK
    after = direct.probe.snapshot()
    assert direct.probe.head() == target.head + 1
    assert set(after["tables"]["city"]) - set(before["tables"]["city"]) == {(50, "after", 0)}
    unchanged = ("sync_nodes", "sync_enrollments")
    assert [after[name] for name in unchanged] == [before[name] for name in unchanged]
