"""Helpers of ``tests/providers/test_generated_sqlite_production.py``: the workflow vocabulary
(``workflows``, registered by the test's in-process runtimes and by ``worker``) and the
subprocess runtime entry point (``worker``)."""
