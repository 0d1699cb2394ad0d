"""``python -m bench.merge [--quick]``: the merge rows alone (1k, 10k, 100k per side).

The same as ``python -m bench --only merge``; prints the time for each size and
the growth ratios time(10k)/time(1k) and time(100k)/time(10k).
"""

from __future__ import annotations

import sys

from bench.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["--only", "merge", *sys.argv[1:]]))
