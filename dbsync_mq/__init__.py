"""Offline-first synchronization of SQLAlchemy databases through RabbitMQ.

::

    import dbsync_mq

    @dbsync_mq.track
    class City(Base): ...

    client = dbsync_mq.SyncClient(engine, broker_url="amqp://guest:guest@localhost:5672/%2F")
    client.install()
    client.register(token)          # once, with a token from `dbsync-mq enroll`
    client.sync()                   # whenever the network is there
"""

from dbsync_mq.agent import SyncStatus
from dbsync_mq.client import SyncClient
from dbsync_mq.core.merge import Conflict, ConflictCase
from dbsync_mq.errors import (
    BrokerUnavailable,
    CodecError,
    ConfigurationError,
    DatabaseUnavailable,
    ExtensionError,
    MergeError,
    NotRegistered,
    PendingChanges,
    ProtocolError,
    PullRequired,
    PushRejected,
    RepairRequired,
    ReplyRejected,
    RequestRefused,
    SignatureError,
    SyncError,
    SyncTimeout,
    TrackingError,
    UniqueConstraintError,
)
from dbsync_mq.extensions import ExtensionFailure, extend
from dbsync_mq.results import (
    PendingChange,
    PingResult,
    PullResult,
    PushResult,
    QuarantinedRow,
    RepairResult,
    SyncResult,
)
from dbsync_mq.storage.tracking import track, untracked

__all__ = [
    "BrokerUnavailable",
    "CodecError",
    "ConfigurationError",
    "Conflict",
    "ConflictCase",
    "DatabaseUnavailable",
    "ExtensionError",
    "ExtensionFailure",
    "MergeError",
    "NotRegistered",
    "PendingChange",
    "PendingChanges",
    "PingResult",
    "ProtocolError",
    "PullRequired",
    "PullResult",
    "PushRejected",
    "PushResult",
    "QuarantinedRow",
    "RepairRequired",
    "RepairResult",
    "ReplyRejected",
    "RequestRefused",
    "SignatureError",
    "SyncClient",
    "SyncError",
    "SyncResult",
    "SyncStatus",
    "SyncTimeout",
    "TrackingError",
    "UniqueConstraintError",
    "extend",
    "track",
    "untracked",
]
