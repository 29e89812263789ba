"""The operations layer, above the roles: the `diswm` command line (`ops/cli.py`), the runtime
that starts and supervises jobs, clusters and experiments (`ops/runtime/`), the benchmarks
(`ops/bench/`) and the reports (`ops/report.py`). It imports the roles and the core; nothing
below imports it (tests/test_architecture.py)."""
