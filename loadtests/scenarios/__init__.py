"""Locust user classes, one module per scenario."""
