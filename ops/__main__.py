"""`python -m ops ...`: the same CLI as the `diswm` command (for hosts where it is not installed)."""

from ops.cli import main

raise SystemExit(main())
