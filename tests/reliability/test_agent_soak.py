"""The agents' soak: five agents writing and deleting related rows for a minute.

Apart from the other agent tests so that the suite's processes share them out.
"""

from __future__ import annotations

import threading

import pytest

from tests.models import City
from tests.reliability.conftest import settled, wait_until

pytestmark = pytest.mark.broker


SOAK_NODES = 5
SOAK_SECONDS = 60.0


def _churn(node, stop: threading.Event, seed: int, errors: list[BaseException]) -> None:
    """Write, re-point and delete related rows on ``node`` until ``stop``."""
    import random

    import sqlalchemy as sa
    from sqlalchemy.orm import Session

    from tests.models import Person

    chooser = random.Random(seed)
    count = 0
    try:
        while not stop.is_set():
            with Session(node.engine) as session:
                cities = session.scalars(sa.select(City)).all()
                people = session.scalars(sa.select(Person)).all()
                action = chooser.random()
                if action < 0.35 or not cities:
                    session.add(City(name=f"n{seed}-c{count}"))
                elif action < 0.7:
                    city = chooser.choice(cities)
                    session.add(Person(name=f"n{seed}-p{count}", city_id=city.id))
                elif action < 0.85 and people:
                    chooser.choice(people).city_id = chooser.choice(cities).id
                else:
                    city = chooser.choice(cities)
                    for person in people:
                        if person.city_id == city.id:
                            person.city_id = None
                    session.flush()
                    session.delete(city)
                session.commit()
            count += 1
            stop.wait(0.05)
    except BaseException as exc:
        errors.append(exc)


@pytest.mark.slow
def test_five_agents_writing_and_deleting_related_rows_end_equal_to_the_server(
    make_node, worker, probe
):
    # Given five nodes syncing in the background
    nodes = [make_node(f"n{i}") for i in range(SOAK_NODES)]
    for node in nodes:
        node.start(debounce=0.05, retry_max=2)
    stop, errors = threading.Event(), []
    writers = [
        threading.Thread(target=_churn, args=(node, stop, index, errors))
        for index, node in enumerate(nodes)
    ]
    try:
        # When each writes, re-points and deletes related rows at once for a minute
        for writer in writers:
            writer.start()
        stop.wait(SOAK_SECONDS)
        stop.set()
        for writer in writers:
            writer.join(30)
        assert errors == []

        # Then, left alone, every node ends equal to the server
        wait_until(lambda: settled(nodes, probe), 120, "the nodes to converge")
        assert probe.head() > SOAK_NODES
    finally:
        stop.set()
        for node in nodes:
            node.stop()
