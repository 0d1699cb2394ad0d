"""Benchmarks of dbsync-mq against bare baselines measured in the same run.

::

    python -m bench --quick                 # about 1 minute, smaller sizes
    python -m bench --json bench-full.json  # the full table, about 3 minutes
    python -m bench --only apply --only merge
    python -m bench.profile roundtrip       # profiles behind a missed target

See ``docs/performance.md`` for what each row measures and the latest table.
"""
