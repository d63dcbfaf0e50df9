"""Worker scripts for the multi-process PostgreSQL tests (run as ``python -m``, not collected)."""
