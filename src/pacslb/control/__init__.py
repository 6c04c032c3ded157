"""The control process: config store, health checks, reconcile, API."""
