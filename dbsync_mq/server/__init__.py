"""The server side: request handlers over the central database, and its set-up.

The worker process (``dbsync-mq worker``) is a thin shell over ``Server``.
"""

from dbsync_mq.server.dispatch import Outcome, Server
from dbsync_mq.server.state import initialize, issue_enrollment

__all__ = ["Outcome", "Server", "initialize", "issue_enrollment"]
