"""Malformed, forged and unauthorized requests: each is dead-lettered or answered with a
signed error, the server database is unchanged, and the worker keeps serving."""

from __future__ import annotations

import pytest

from tests.security import cases
from tests.security.conftest import check_outcome, prove_a_genuine_sync_works


@pytest.mark.parametrize("case", cases.ALL, ids=lambda case: case.id)
def test_each_bad_request_is_dead_lettered_or_refused_with_its_code_and_changes_nothing(
    case, direct, ledger, request
):
    # Given the server's state before the request
    before = direct.probe.snapshot()
    message = case.build(direct.target)

    # When the server handles it
    outcome = direct.handle(message)
    ledger.bad_inputs(request.node.name)

    # Then it is dead-lettered or answered as the case says, and nothing changed
    check_outcome(case, message, outcome, direct.server.public_key)
    assert direct.probe.snapshot() == before


@pytest.mark.broker
@pytest.mark.parametrize("category", cases.CATEGORIES)
def test_bad_requests_through_the_broker_are_dead_lettered_or_refused_and_the_worker_serves_on(
    category, live, ledger, request
):
    # Given a live worker and the server's state before the attack
    before = live.probe.snapshot()
    batch = cases.by_category(category)

    # When every request of the category arrives through the broker
    expected_dead, expected_answers, answers = live.attack(batch)
    ledger.bad_inputs(request.node.name, len(batch))

    # Then each got its signed answer or was dead-lettered, and nothing else happened
    dead = live.wire.dead_letters(sum(expected_dead.values()))
    assert sorted(dead) == sorted(expected_dead.elements())
    assert answers == cases_counter(expected_answers)
    assert live.probe.snapshot() == before

    # And the worker still serves genuine requests
    prove_a_genuine_sync_works(live)
    assert live.wire.depth(live.wire.topology.dead_letter_queue) == 0


def cases_counter(answers):
    from collections import Counter

    return Counter(answers)
