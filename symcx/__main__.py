"""``python -m symcx``: the command line (see :mod:`symcx.cli`)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
