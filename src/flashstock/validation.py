"""Rules for the identifiers and quantities every entry point accepts (SPEC §3)."""

from __future__ import annotations

import re
from datetime import date

_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
MAX_ID_LENGTH = 128
# Printable characters only, as str.isprintable() has them: no controls, no format
# characters (zero-width space, BOM, bidirectional overrides), no separators but the
# space, no private-use or unassigned code points. U+E000, private use, stands in for "/"
# inside URL path segments (api/paths.py), so it must never be allowed.


def id_problem(value: object, what: str = "id") -> str | None:
    """Why ``value`` is not a valid sku, location or id, or None when it is."""
    if not isinstance(value, str):
        return f"{what} must be a string"
    if not value:
        return f"{what} must not be empty"
    if len(value) > MAX_ID_LENGTH:
        return f"{what} must be at most {MAX_ID_LENGTH} characters (got {len(value)})"
    if value != value.strip():
        return f"{what} must not start or end with white space"
    if not value.isprintable():
        return f"{what} must contain printable characters only"
    return None


def is_date(text: str) -> bool:
    """A calendar date written YYYY-MM-DD, as policies and stock files take it
    (``date.fromisoformat`` alone also reads week dates such as 2024-W01-1)."""
    if not _DATE.fullmatch(text):
        return False
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


def quantity_problem(
    value: object, what: str = "quantity", *, low: int = 1, high: int
) -> str | None:
    """Why ``value`` is not an integer quantity in ``[low, high]``, or None when it is.

    Booleans, floats (even 2.0) and numeric strings are refused: quantities are
    JSON integers only.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        return f"{what} must be an integer"
    if value < low:
        return f"{what} must be at least {low}"
    if value > high:
        return f"{what} must be at most {high}"
    return None
