"""`python -m diswm ...`: the same CLI as the `diswm` command (for hosts where it is not installed)."""

from diswm.cli import main

raise SystemExit(main())
