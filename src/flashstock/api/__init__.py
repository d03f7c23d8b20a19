"""HTTP API: one router per resource, built by :func:`create_app`."""

from flashstock.api.app import create_app

__all__ = ["create_app"]
