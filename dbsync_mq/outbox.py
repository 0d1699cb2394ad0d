"""What a push carries: the logged changes with their current rows and extension data.

Read from the node's database in the transaction that prepares the push.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy.engine import Connection

from dbsync_mq.core.model import DELETE, UPDATE, Change
from dbsync_mq.extensions import extensions_of, load_data
from dbsync_mq.storage.apply import read_row_keys
from dbsync_mq.storage.models import ModelSet

logger = logging.getLogger(__name__)


def attach_rows(
    connection: Connection, models: ModelSet, changes: Sequence[Change]
) -> list[Change]:
    """The changes with the current row of every insert and update, ready to push.

    A row that vanished without a logged delete (raw SQL) is pushed as a delete
    if the server has it, and dropped if it was never pushed.
    """
    pushed = {model.name: model for model in models if model.pushed}
    extended = {name for name, model in pushed.items() if extensions_of(model)}
    wanted = [c.row_key for c in changes if c.command != DELETE and c.table in models]
    rows = read_row_keys(connection, models, wanted)
    ready = []
    for change in changes:
        if change.table not in pushed:
            continue
        if change.command == DELETE:
            ready.append(change)
        elif (row := rows.get(change.row_key)) is not None:
            extensions = load_data(pushed[change.table], row) if change.table in extended else None
            ready.append(
                Change(
                    change.table,
                    change.key,
                    change.command,
                    change.hlc,
                    row,
                    change.clocks,
                    extensions,
                )
            )
        else:
            logger.warning("%s row %r vanished without a logged delete", change.table, change.key)
            if change.command == UPDATE:
                ready.append(Change(change.table, change.key, DELETE, change.hlc))
    return ready
