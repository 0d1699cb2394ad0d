"""The dbsync-mq worker process: a thin shell over ``dbsync_mq.server``."""

from worker.main import main
from worker.process import RET_CONFIG, RET_KILLED, RET_OK, Worker

__all__ = ["RET_CONFIG", "RET_KILLED", "RET_OK", "Worker", "main"]
