"""``python -m burrow`` is the same as the ``burrow`` command."""

from burrow.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
