"""Job handlers, one module per kind; the app registers them into `JobManager(handlers=...)`."""
