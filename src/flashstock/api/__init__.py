"""HTTP API: one router per resource, built by :func:`create_app`."""

from flashstock.api import paths  # noqa: F401  (registers the {name:seg} path convertor first)
from flashstock.api.app import create_app

__all__ = ["create_app"]
