"""Ready-made deployments."""
