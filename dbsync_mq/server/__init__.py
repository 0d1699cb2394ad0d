"""The server side: request handlers over the central database, and its set-up.

The worker process (``dbsync-mq worker``) is a thin shell over ``Server``.
"""

from dbsync_mq.server.dispatch import Outcome, Server
from dbsync_mq.server.state import initialize, issue_enrollment
from dbsync_mq.server.writes import VersionWriter, install, uninstall

__all__ = [
    "Outcome",
    "Server",
    "VersionWriter",
    "initialize",
    "install",
    "issue_enrollment",
    "uninstall",
]
