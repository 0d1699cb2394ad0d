"""Profiles of the measured code paths, to explain a missed target.

::

    python -m bench.profile apply      # Server.handle of a 10,000-row push (PG)
    python -m bench.profile roundtrip  # client.push() of one row, and the worker's stages
    python -m bench.profile handle     # Server.handle of 1-row pushes, refusals, pulls (PG)
    python -m bench.profile encode     # the client's prepare step for 10,000 rows
    python -m bench.profile pull       # client.pull() of 10,000 rows, and the worker's handle
    python -m bench.profile repair     # client.repair() of 100,000 rows, and the worker's handle
    python -m bench.profile merge      # plan_merge of 100,000 conflicts, and the GC's share

cProfile (standard library, wall-clock timer) profiles the calling thread
only; where the work happens on the worker's handler thread, ``Server.handle``
is wrapped so that each call is profiled on the thread that makes it.
"""

from __future__ import annotations

import argparse
import sys

import bench.profiles  # noqa: F401  (registers the targets)
from bench.profiling import TARGETS
from bench.services import Services


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("targets", nargs="+", choices=list(TARGETS))
    args = parser.parse_args(argv)
    with Services() as services:
        for name in args.targets:
            print(f"\n##### {name}")
            TARGETS[name](services)
    return 0


if __name__ == "__main__":
    sys.exit(main())
