"""flashstock: a Redis-backed inventory reservation engine that never oversells."""

__version__ = "0.1.0"
