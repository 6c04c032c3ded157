"""The built-in data plane: l7-tcp and l7-http listeners in their own process."""
