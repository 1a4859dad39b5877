"""``python -m dctps``: the ``dctps`` command line (same as the ``dctps`` script)."""

from dctps.cli import main

if __name__ == "__main__":
    main()
