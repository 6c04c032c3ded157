"""pacslb: load-balancer appliance software for clinical imaging."""

__version__ = "0.1.0"
