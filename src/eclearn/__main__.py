"""``python -m eclearn``: the same as the ``eclearn`` command."""

from eclearn.cli import main

raise SystemExit(main())
