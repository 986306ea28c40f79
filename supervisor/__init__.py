"""sfsupervisor: serves a Python serverless function from a pool of isolated worker processes."""

__version__ = "0.1.0"
