"""Worker-process entry points and the workflows they run, for the multi-process SQLite tests."""
