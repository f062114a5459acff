"""The edge voice assistant service."""

__version__ = "0.1.0"
