"""``python -m burrow.bench`` is ``burrow bench``."""

import sys

from burrow.bench.runner import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
