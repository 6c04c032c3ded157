"""Real peers the tests start on loopback, and helpers to start and stop them by PID."""
