"""``python -m dbsync_mq``: the same as the ``dbsync-mq`` command."""

from dbsync_mq.cli import main

main()
