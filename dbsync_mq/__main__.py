"""``python -m dbsync_mq``: the same as the ``dbsync-mq`` command."""

from dbsync_mq.cli import main

if __name__ == "__main__":  # not when a worker process is spawned from it
    main()
