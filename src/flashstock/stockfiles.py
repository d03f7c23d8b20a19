"""Stock file readers behind ``flashstock warm`` and ``POST /v1/stock/import`` (SPEC §5).

``parse_stock_file`` reads a whole file and returns every row it would load,
every row it deliberately leaves out (``skipped``, with why), and every error
with its line number. It applies nothing: callers load ``rows`` only when
``errors`` is empty, so a bad file changes nothing. Problems with the file as a
whole (not UTF-8, no header, an unknown header) raise ``StockFileError``.

``detect_format`` picks the format from the header; column names match
case-insensitively and ignore surrounding spaces.

generic (flashstock's own)
    ``sku`` (required); ``location`` (optional; absent or empty: ``default``);
    ``on_hand``; and the optional columns ``safety_stock``, ``backorder``
    (``deny``, ``allow`` or ``notify``), ``backorder_limit``,
    ``low_stock_threshold``, ``per_customer_limit`` (at least 1),
    ``ships_in_days`` (whole numbers) and ``restock_date`` (``YYYY-MM-DD``)::

        sku,location,on_hand,safety_stock,backorder,backorder_limit
        TEE-RED-M,berlin,120,5,allow,20
        TEE-RED-M,paris,40,,,
        MUG-01,,7,,,

    An empty cell leaves that field as it is in flashstock; an empty
    ``on_hand`` makes a policy-only row (``on_hand`` None; ``safety_stock``
    then cannot be given, and a row with neither is an error). The word ``none``
    clears a nullable policy field. The policy belongs to the sku, so it may
    be given on any of the sku's rows. Because this format is ours, ambiguity
    is refused, not guessed: unknown columns, a sku+location on two rows, and
    two rows giving one sku different policy values are errors.

shopify
    The inventory export: ``Handle``, ``SKU``, ``Location`` and the 2024
    columns ``On hand (current)``, ``On hand (new)``, ``Committed (not
    editable)``, ``Unavailable (not editable)``, ``Available (not editable)``,
    or the 2023 ones ``On hand``, ``Committed``, ``Unavailable``,
    ``Available``. ``on_hand`` is loaded as the units flashstock may sell:
    Shopify's on hand (``On hand (new)`` where filled in, else the current
    one) minus ``Committed`` (units promised to open Shopify orders, which
    ship outside flashstock) and ``Unavailable`` (damaged, quality control,
    held), which is Shopify's ``Available``. Rows saying ``not stocked`` are
    skipped. Also the product export: ``Variant SKU``, ``Variant Inventory
    Qty``, ``Variant Inventory Policy`` (``deny`` -> deny, ``continue`` ->
    allow) and ``Variant Inventory Tracker`` (empty: stock not tracked, so
    ``on_hand`` None and only the policy is set); it has no location
    (``default``) and its image-only rows are skipped.

woocommerce
    The product export: ``SKU``, ``Type``, ``Stock``, ``In stock?``,
    ``Backorders allowed?`` (0/1/notify -> deny/allow/notify) and ``Low stock
    amount``; no location (``default``). An empty ``Stock`` means WooCommerce
    does not manage the stock: ``on_hand`` None, except that ``In stock?`` 0
    loads 0, and ``backorder`` loads 0 with backorder notify (WooCommerce's
    "available on backorder"). Skipped: variable products without stock of
    their own, grouped and external products, variations whose ``Stock`` is
    ``parent`` (one pool shared by several SKUs, which flashstock levels
    cannot express; left out, such a SKU is unknown and never oversold).
    ``Sold individually?`` limits one order, not one customer: not mapped.

Rules for the platform exports (shopify, woocommerce):

* A row without a SKU is skipped: flashstock keys stock by SKU.
* Negative stock is a real store state (oversold, or backorders taken), but
  flashstock's ``on_hand`` cannot be negative: the row loads as 0 with a note
  naming its line, so no new sale succeeds until stock arrives.
* Two rows with one SKU at one location are two products sharing a SKU. The
  storefront reserves by SKU, so their units form one pool: the row loads once,
  at its first line, with the quantities summed (each clamped at 0 first, so
  one product's oversell does not eat the other's stock) and the stricter
  policy (backorder deny < notify < allow; the larger low-stock threshold),
  and a note names both lines.
* Other columns (barcodes, prices, descriptions) are never read, so damage
  such as barcodes turned into ``3.65275E+11`` by a spreadsheet is harmless.

Every format: UTF-8 with or without a BOM (anything else is one error naming
the line); LF or CRLF (CR alone, the old Mac style, is refused with advice);
quoted fields holding commas and line breaks (``line`` is the physical line
where a record starts; the header is line 1); blank rows ignored; quantities
are whole numbers, also written ``5.0000`` (``5.5`` is an error), at most
``max_quantity``; skus and locations follow ``validation.id_problem``. The
file is streamed one line at a time: a line over 1 MiB, a record over 4 MiB,
a field over the csv module's field size limit, or ``max_errors`` errors stop
reading.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import BinaryIO

from flashstock.settings import Settings
from flashstock.validation import id_problem, is_date

# One module, though longer than the ~400 lines we aim for: the formats share the
# reading, error, duplicate and negative-stock rules, which only make sense together.

FORMATS = ("generic", "shopify", "woocommerce")
DEFAULT_LOCATION = "default"
DEFAULT_MAX_QUANTITY: int = Settings.model_fields["max_quantity"].default
MAX_LINE_BYTES = 1 << 20
MAX_RECORD_BYTES = 4 << 20
MAX_NOTES = 200

# Skip reasons: fixed strings, so that callers can count skipped rows by reason.
SKIP_NO_SKU = "no SKU"
SKIP_NOT_STOCKED = "not stocked at this location"
SKIP_IMAGE_ROW = "image-only row, not a variant"
SKIP_VARIABLE = "variable product: its variations hold the stock"
SKIP_GROUPED = "grouped product: holds no stock"
SKIP_EXTERNAL = "external product: sold elsewhere"
SKIP_PARENT_STOCK = "stock kept on the parent product, shared by its variations"

BACKORDER_VALUES = ("deny", "notify", "allow")  # strictest first


@dataclass(frozen=True, slots=True)
class StockRow:
    """One level to set (or, with ``on_hand`` None, only a policy)."""

    line: int
    sku: str
    location: str
    on_hand: int | None
    safety_stock: int | None = None
    policy: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Skipped:
    """A row deliberately not loaded; ``reason`` is one of the ``SKIP_*`` strings."""

    line: int
    sku: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class RowError:
    """A row (or the file, on line 1 or at the line reading stopped) that is wrong."""

    line: int
    column: str | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}, {self.column}" if self.column else f"line {self.line}"
        return f"{where}: {self.message}"


class StockFileError(ValueError):
    """A stock file that cannot be loaded; ``errors`` says where and why."""

    def __init__(self, errors: Sequence[RowError]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(map(str, self.errors)) or "invalid stock file")


@dataclass
class ParseResult:
    format: str
    rows: list[StockRow] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Finer than format: generic, shopify-inventory-2024, shopify-inventory-2023,
    # shopify-products or woocommerce.
    layout: str = ""
    # The line at which reading stopped after max_errors errors, or None.
    stopped_at: int | None = None

    @property
    def ok(self) -> bool:
        return not self.errors

    def skipped_by_reason(self) -> dict[str, int]:
        return dict(Counter(s.reason for s in self.skipped))

    def raise_for_errors(self) -> None:
        """Raise ``StockFileError`` when any row is wrong."""
        if self.errors:
            raise StockFileError(self.errors)


# -- formats ---------------------------------------------------------------------------------

# Each layout maps our column keys to the header names that can spell them (casefolded).
_GENERIC_POLICY_INTS = {
    "backorder_limit": 0,
    "low_stock_threshold": 0,
    "per_customer_limit": 1,
    "ships_in_days": 0,
}
_GENERIC_COLUMNS = (
    "sku",
    "location",
    "on_hand",
    "safety_stock",
    "backorder",
    *_GENERIC_POLICY_INTS,
    "restock_date",
)
_LAYOUTS: dict[str, dict[str, tuple[str, ...]]] = {
    "generic": {name: (name,) for name in _GENERIC_COLUMNS},
    "shopify-inventory": {
        "sku": ("sku",),
        "location": ("location",),
        "on_hand": ("on hand (current)", "on hand"),
        "on_hand_new": ("on hand (new)",),
        "committed": ("committed (not editable)", "committed"),
        "unavailable": ("unavailable (not editable)", "unavailable"),
        "available": ("available (not editable)", "available"),
    },
    "shopify-products": {
        "sku": ("variant sku",),
        "tracker": ("variant inventory tracker",),
        "qty": ("variant inventory qty",),
        "policy": ("variant inventory policy",),
        "option1": ("option1 value",),
    },
    "woocommerce": {
        "sku": ("sku",),
        "type": ("type",),
        "stock": ("stock",),
        "in_stock": ("in stock?",),
        "backorders": ("backorders allowed?",),
        "low_stock": ("low stock amount",),
    },
}
_EXPECTED = (
    "a generic stock file (sku, location, on_hand, ...), a Shopify inventory export "
    "(Handle, SKU, Location, On hand / Available), a Shopify product export "
    "(Handle, Variant SKU, Variant Inventory Qty) or a WooCommerce product export "
    "(SKU, Stock, In stock?)"
)


def _names(header: Sequence[str]) -> list[str]:
    return [h.strip().lstrip("\ufeff").strip().casefold() for h in header]


def _layout_of(header: Sequence[str]) -> str | None:
    names = set(_names(header))
    if {"handle", "sku", "location"} <= names and names & {
        "on hand (current)",
        "on hand",
        "available (not editable)",
        "available",
    }:
        year = "2024" if "on hand (current)" in names else "2023"
        return f"shopify-inventory-{year}"
    if {"handle", "variant sku", "variant inventory qty"} <= names:
        return "shopify-products"
    if "sku" in names and names & {"stock", "in stock?"}:
        return "woocommerce"
    if "sku" in names and (
        "on_hand" in names or (names - {"", "sku", "location"}) and names <= {"", *_GENERIC_COLUMNS}
    ):
        return "generic"
    return None


def _format_of(layout: str) -> str:
    return layout.split("-", 1)[0]


def detect_format(header: Sequence[str]) -> str:
    """The format of a stock file from its header row: generic, shopify or woocommerce.

    Raises:
        ValueError: the header fits none of them.
    """
    layout = _layout_of(header)
    if layout is None:
        raise ValueError(_unknown_header(header))
    return _format_of(layout)


def _unknown_header(header: Sequence[str]) -> str:
    shown = ", ".join(h.strip() for h in header[:8]) + (", ..." if len(header) > 8 else "")
    message = f"unrecognised header ({_clip(shown, 200)}); expected {_EXPECTED}"
    if len(header) == 1 and (";" in header[0] or "\t" in header[0]):
        message += "; the file seems separated by semicolons or tabs: save it with commas"
    return message


# -- reading ---------------------------------------------------------------------------------


class _Fatal(Exception):
    """Reading cannot go on; carries the error to report."""

    def __init__(self, line: int, message: str, column: str | None = None) -> None:
        super().__init__(message)
        self.error = RowError(line, column, message)


class _Lines:
    """The physical lines of a byte stream, decoded one at a time.

    Decoding line by line (rather than through a TextIOWrapper, which decodes
    8 KiB chunks ahead of the csv reader) names the exact line of a bad byte,
    and keeps memory bounded by the longest record.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.count = 0
        self.record_start = 1
        self._record_bytes = 0

    def __iter__(self) -> Iterator[str]:
        return self

    def start_record(self) -> None:
        self.record_start = self.count + 1
        self._record_bytes = 0

    def __next__(self) -> str:
        raw = self._stream.readline(MAX_LINE_BYTES + 1)
        if not raw:
            raise StopIteration
        if not isinstance(raw, bytes | bytearray):
            raise TypeError("stock files are read as bytes: open the file in binary mode")
        self.count += 1
        if self.count == 1:
            raw = _check_start(bytes(raw))
        if len(raw) > MAX_LINE_BYTES:
            raise _Fatal(self.count, f"line is longer than {MAX_LINE_BYTES} bytes")
        self._record_bytes += len(raw)
        if self._record_bytes > MAX_RECORD_BYTES:
            raise _Fatal(
                self.record_start,
                f"record is longer than {MAX_RECORD_BYTES} bytes (is a quote left open?)",
            )
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Fatal(
                self.count,
                f"not UTF-8 text (byte 0x{raw[exc.start]:02X} at byte {exc.start + 1} of "
                "the line); save the file as UTF-8 (in Excel: CSV UTF-8)",
            ) from None
        if "\x00" in text:
            raise _Fatal(
                self.count, "contains NUL characters: save the file as UTF-8 CSV, not UTF-16"
            )
        return text


def _check_start(raw: bytes) -> bytes:
    if raw.startswith(b"\xef\xbb\xbf"):
        return raw[3:]
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise _Fatal(1, "the file is UTF-16 text; save it as UTF-8 (in Excel: CSV UTF-8)")
    if raw.startswith((b"PK\x03\x04", b"\xd0\xcf\x11\xe0")):
        raise _Fatal(1, "this is a spreadsheet workbook, not CSV; export it as CSV UTF-8")
    return raw


@contextmanager
def _binary(source: bytes | str | os.PathLike[str] | BinaryIO) -> Iterator[BinaryIO]:
    if isinstance(source, bytes | bytearray | memoryview):
        yield io.BytesIO(source)
    elif isinstance(source, str) and ("\n" in source or "\r" in source):
        # A str holding a line break is the CSV text itself; no file name has one.
        yield io.BytesIO(source.encode("utf-8", "surrogatepass"))
    elif isinstance(source, str | os.PathLike):
        with open(source, "rb") as stream:
            yield stream
    elif hasattr(source, "readline"):
        yield source
    else:
        raise TypeError(f"cannot read a stock file from {type(source).__name__}")


class _Record:
    """One data row, with the errors found in it."""

    __slots__ = ("line", "values", "columns", "errors")

    def __init__(self, line: int, values: list[str], columns: Mapping[str, tuple[int, str]]):
        self.line = line
        self.values = values
        self.columns = columns
        self.errors: list[RowError] = []

    def has(self, key: str) -> bool:
        return key in self.columns

    def raw(self, key: str) -> str:
        column = self.columns.get(key)
        return "" if column is None else self.values[column[0]]

    def cell(self, key: str) -> str:
        return self.raw(key).strip()

    def error(self, key: str, message: str) -> None:
        column = self.columns.get(key)
        self.errors.append(RowError(self.line, column[1] if column else None, message))


_NUMBER = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?")


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _whole(text: str) -> int | None:
    """``text`` as a whole number (``5``, ``-3``, ``5.0000``), or None if it is not one."""
    if len(text) > 40 or not _NUMBER.fullmatch(text):
        return None
    whole, _, fraction = text.partition(".")
    return None if fraction.strip("0") else int(whole)


class _Reader:
    """Turns records into rows, skips, errors and notes for one file."""

    def __init__(self, result: ParseResult, max_quantity: int) -> None:
        self.result = result
        self.high = max_quantity
        self.index: dict[tuple[str, str], int] = {}  # platform: key -> position in rows
        self.first_line: dict[tuple[str, str], int] = {}  # generic: key -> line
        self.policies: dict[str, dict[str, tuple[object, int]]] = {}
        self.notes_dropped = 0
        self.held_rows = 0
        self.new_count_rows = 0

    def note(self, text: str) -> None:
        if len(self.result.notes) < MAX_NOTES:
            self.result.notes.append(text)
        else:
            self.notes_dropped += 1

    def skip(self, rec: _Record, sku: str | None, reason: str) -> None:
        self.result.skipped.append(Skipped(rec.line, sku or None, reason))

    def number(self, rec: _Record, key: str, *, low: int = 0) -> int | None:
        """The cell as a whole number in ``[low, max_quantity]``, or None after an error."""
        text = rec.cell(key)
        value = _whole(text)
        if value is None:
            rec.error(key, f"must be a whole number (got {_clip(text)!r})")
        elif value < low:
            rec.error(key, f"must be at least {low} (got {_clip(text)!r})")
        elif value > self.high:
            rec.error(key, f"must be at most {self.high} (got {_clip(text)!r})")
        else:
            return value
        return None

    def check_id(self, rec: _Record, key: str, value: str, what: str) -> None:
        if problem := id_problem(value, what):
            rec.error(key, problem)

    # -- generic --------------------------------------------------------------------------------

    def generic(self, rec: _Record) -> None:
        sku = rec.raw("sku")
        self.check_id(rec, "sku", sku, "sku")
        location = rec.raw("location") or DEFAULT_LOCATION
        self.check_id(rec, "location", location, "location")
        on_hand = self.number(rec, "on_hand") if rec.cell("on_hand") else None
        safety = self.number(rec, "safety_stock") if rec.cell("safety_stock") else None
        policy: dict[str, object] = {}
        if text := rec.cell("backorder"):
            if text.casefold() in BACKORDER_VALUES:
                policy["backorder"] = text.casefold()
            else:
                rec.error("backorder", f"must be deny, allow or notify (got {_clip(text)!r})")
        for key, low in _GENERIC_POLICY_INTS.items():
            if text := rec.cell(key):
                policy[key] = None if text.casefold() == "none" else self.number(rec, key, low=low)
        if text := rec.cell("restock_date"):
            policy["restock_date"] = None if text.casefold() == "none" else _iso_date(rec, text)
        if on_hand is None and not rec.errors:
            # The engine sets safety stock together with a count, never alone.
            if rec.cell("safety_stock"):
                rec.error("safety_stock", "needs an on_hand on the same row")
            elif not policy:
                rec.error("on_hand", "is empty and the row sets no policy: nothing to load")
        if rec.errors:
            return
        self.check_policy(rec, sku, policy)
        first = self.first_line.setdefault((sku, location), rec.line)
        if first != rec.line:
            rec.error("sku", f"{sku!r} at location {location!r} is also on line {first}")
        if not rec.errors:
            self.result.rows.append(StockRow(rec.line, sku, location, on_hand, safety, policy))

    def check_policy(self, rec: _Record, sku: str, policy: Mapping[str, object]) -> None:
        seen = self.policies.setdefault(sku, {})
        for key, value in policy.items():
            before = seen.setdefault(key, (value, rec.line))
            if before[0] != value:
                rec.error(
                    key,
                    f"{value!r} contradicts {before[0]!r} on line {before[1]} for sku {sku!r} "
                    "(the policy is shared by all locations of a sku)",
                )

    # -- platform exports ---------------------------------------------------------------------

    def add(
        self,
        rec: _Record,
        sku: str,
        location: str,
        on_hand: int | None,
        policy: dict[str, object],
    ) -> None:
        if on_hand is not None and on_hand < 0:
            self.note(
                f"line {rec.line}: {sku!r} at {location!r} has {on_hand} in stock "
                "(sold ahead of stock); loaded as 0"
            )
            on_hand = 0
        key = (sku, location)
        position = self.index.get(key)
        if position is None:
            self.index[key] = len(self.result.rows)
            self.result.rows.append(StockRow(rec.line, sku, location, on_hand, None, policy))
            return
        first = self.result.rows[position]
        total = first.on_hand
        if on_hand is not None:
            total = on_hand + (total or 0)
            if total > self.high:
                rec.error("sku", f"{sku!r} sums to more than {self.high} units")
                return
        merged = _stricter(first.policy, policy)
        self.result.rows[position] = replace(first, on_hand=total, policy=merged)
        kept = "" if merged == first.policy == policy else f"; policy kept: {merged}"
        self.note(
            f"lines {first.line} and {rec.line}: {sku!r} at {location!r} is on both "
            f"(two products share the SKU); loaded once, quantities summed: {total}{kept}"
        )

    def shopify_inventory(self, rec: _Record) -> None:
        sku = rec.raw("sku")
        if not sku.strip():
            return self.skip(rec, None, SKIP_NO_SKU)
        renewed = bool(rec.cell("on_hand_new"))
        key = "on_hand_new" if renewed else "on_hand" if rec.has("on_hand") else "available"
        text = rec.cell(key)
        if text.casefold() == "not stocked":
            return self.skip(rec, sku, SKIP_NOT_STOCKED)
        self.check_id(rec, "sku", sku, "SKU")
        location = rec.raw("location")
        self.check_id(rec, "location", location, "Location")
        if not text:
            rec.error(key, "is empty (expected a number or 'not stocked')")
            return
        units = self.number(rec, key, low=-self.high)
        held = 0
        if key != "available":
            for part in ("committed", "unavailable"):
                cell = rec.cell(part)
                if cell and cell.casefold() != "not stocked":
                    held += self.number(rec, part) or 0
        if units is None or rec.errors:
            return
        if held:
            self.held_rows += 1
        if renewed:
            self.new_count_rows += 1
        self.add(rec, sku, location, units - held, {})

    def shopify_products(self, rec: _Record) -> None:
        sku = rec.raw("sku")
        if not any(rec.cell(k) for k in ("sku", "qty", "policy", "tracker", "option1")):
            return self.skip(rec, None, SKIP_IMAGE_ROW)
        if not sku.strip():
            return self.skip(rec, None, SKIP_NO_SKU)
        self.check_id(rec, "sku", sku, "Variant SKU")
        policy: dict[str, object] = {}
        text = rec.cell("policy").casefold()
        if text in ("deny", "continue"):
            policy["backorder"] = "deny" if text == "deny" else "allow"
        elif text:
            rec.error("policy", f"must be deny or continue (got {_clip(text)!r})")
        tracked = bool(rec.cell("tracker" if rec.has("tracker") else "qty"))
        on_hand = None
        if tracked and not rec.cell("qty"):
            rec.error("qty", "is empty, but the variant's inventory is tracked")
        elif tracked:
            on_hand = self.number(rec, "qty", low=-self.high)
        if not rec.errors:
            self.add(rec, sku, DEFAULT_LOCATION, on_hand, policy)

    def woocommerce(self, rec: _Record) -> None:
        sku = rec.raw("sku")
        types = {t.strip().casefold() for t in rec.cell("type").split(",")}
        stock = rec.cell("stock")
        if "grouped" in types:
            return self.skip(rec, sku, SKIP_GROUPED)
        if "external" in types:
            return self.skip(rec, sku, SKIP_EXTERNAL)
        if "variable" in types and not stock:
            return self.skip(rec, sku, SKIP_VARIABLE)
        if not sku.strip():
            return self.skip(rec, None, SKIP_NO_SKU)
        if stock.casefold() == "parent":
            return self.skip(rec, sku, SKIP_PARENT_STOCK)
        self.check_id(rec, "sku", sku, "SKU")
        policy: dict[str, object] = {}
        if text := rec.cell("backorders"):
            if (value := _WOO_BACKORDERS.get(text.casefold())) is not None:
                policy["backorder"] = value
            else:
                rec.error("backorders", f"must be 0, 1 or notify (got {_clip(text)!r})")
        if rec.cell("low_stock"):
            policy["low_stock_threshold"] = self.number(rec, "low_stock")
        text = rec.cell("in_stock")
        status = _WOO_STATUS.get(text.casefold())
        if status is None:
            rec.error("in_stock", f"must be 1, 0 or backorder (got {_clip(text)!r})")
        on_hand: int | None = None
        if stock:
            on_hand = self.number(rec, "stock", low=-self.high)
        elif status == "outofstock":
            on_hand = 0
        elif status == "onbackorder":
            on_hand = 0
            if policy.get("backorder", "deny") == "deny":
                policy["backorder"] = "notify"
        if not rec.errors:
            self.add(rec, sku, DEFAULT_LOCATION, on_hand, policy)

    def finish(self, layout: str) -> None:
        if self.held_rows:
            self.note(
                f"{_rows(self.held_rows)}: Shopify's Committed and Unavailable units were left "
                "out of on_hand (promised to open Shopify orders, or held)"
            )
        if self.new_count_rows:
            self.note(f"{_rows(self.new_count_rows)}: On hand (new) was loaded, not the current")
        reasons = self.result.skipped_by_reason()
        if not self.result.rows and reasons.get(SKIP_NO_SKU) and layout != "generic":
            self.note(
                "no row has a SKU, and flashstock keys stock by SKU: give the products "
                "SKUs in the shop and export again"
            )
        if self.notes_dropped:
            self.result.notes.append(f"... and {self.notes_dropped} more notes")


_WOO_BACKORDERS = {
    "0": "deny",
    "no": "deny",
    "false": "deny",
    "1": "allow",
    "yes": "allow",
    "true": "allow",
    "notify": "notify",
}
_WOO_STATUS = {
    "": "instock",
    "1": "instock",
    "yes": "instock",
    "true": "instock",
    "instock": "instock",
    "0": "outofstock",
    "no": "outofstock",
    "false": "outofstock",
    "outofstock": "outofstock",
    "backorder": "onbackorder",
    "onbackorder": "onbackorder",
}


def _rows(n: int) -> str:
    return "1 row" if n == 1 else f"{n} rows"


def _iso_date(rec: _Record, text: str) -> str | None:
    if is_date(text):
        return text
    rec.error("restock_date", f"must be a date as YYYY-MM-DD (got {_clip(text)!r})")
    return None


def _stricter(first: Mapping[str, object], other: Mapping[str, object]) -> dict[str, object]:
    merged = dict(first)
    for key, value in other.items():
        old = merged.setdefault(key, value)
        if key == "backorder" and old in BACKORDER_VALUES and value in BACKORDER_VALUES:
            stricter = min(BACKORDER_VALUES.index(str(old)), BACKORDER_VALUES.index(str(value)))
            merged[key] = BACKORDER_VALUES[stricter]
        elif key == "low_stock_threshold" and isinstance(old, int) and isinstance(value, int):
            merged[key] = max(old, value)
    return merged


def _columns(header: list[str], layout: str) -> dict[str, tuple[int, str]]:
    """Where each column of ``layout`` is: key -> (index, name as written)."""
    names = _names(header)
    positions: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        positions.setdefault(name, []).append(i)
    spec = _LAYOUTS[layout if layout in _LAYOUTS else layout.rsplit("-", 1)[0]]
    columns: dict[str, tuple[int, str]] = {}
    errors: list[RowError] = []
    for key, spellings in spec.items():
        for spelling in spellings:
            found = positions.get(spelling)
            if not found:
                continue
            if len(found) > 1:
                errors.append(RowError(1, spelling, "column appears more than once"))
            columns[key] = (found[0], header[found[0]].strip().lstrip("\ufeff"))
            break
    if layout == "generic":
        for name in positions.keys() - {"", *_GENERIC_COLUMNS}:
            errors.append(
                RowError(
                    1,
                    _clip(name),
                    f"unknown column; the generic format has {', '.join(_GENERIC_COLUMNS)}",
                )
            )
    if errors:
        raise StockFileError(errors)
    return columns


def parse_stock_file(
    source: bytes | str | os.PathLike[str] | BinaryIO,
    format: str | None = None,
    *,
    max_errors: int = 100,
    max_quantity: int = DEFAULT_MAX_QUANTITY,
    max_rows: int | None = None,
) -> ParseResult:
    """Read a stock file completely and report what loading it would do.

    Args:
        source: the file's bytes; a path (``str`` or ``os.PathLike``); the CSV
            text itself as a ``str`` containing a line break; or a binary stream
            (read, not closed).
        format: ``generic``, ``shopify`` or ``woocommerce``; None detects it
            from the header.
        max_errors: stop reading after this many row errors.
        max_quantity: the largest quantity accepted (the engine refuses more;
            pass ``Settings.max_quantity``).
        max_rows: refuse a file with more data rows than this (memory grows
            with the rows kept for the all-or-nothing check); None: no limit.

    Returns:
        The rows to load (in file order, duplicates of platform exports merged
        into the first), the rows skipped and why, the row errors and notes.

    Raises:
        StockFileError: the file as a whole cannot be read (not UTF-8, no or
            unknown header, a line or field too long, broken CSV); its
            ``errors`` include the row errors found before that point.
        OSError: the path cannot be opened.
        ValueError: an unknown ``format`` or a ``max_errors`` below 1.
    """
    if format is not None and format not in FORMATS:
        raise ValueError(f"unknown stock file format {format!r}; use one of {', '.join(FORMATS)}")
    if max_errors < 1:
        raise ValueError("max_errors must be at least 1")
    result = ParseResult(format=format or "")
    with _binary(source) as stream:
        lines = _Lines(stream)
        try:
            _read(csv.reader(lines), lines, result, format, max_errors, max_quantity, max_rows)
        except _Fatal as exc:
            raise StockFileError([*result.errors, exc.error]) from None
        except csv.Error as exc:
            message = f"not readable as CSV: {exc}"
            if "new-line character" in str(exc):
                message = "a line break inside an unquoted field (old Mac line endings?)"
            elif "field larger than field limit" in str(exc):
                message = f"a field is longer than {csv.field_size_limit()} characters"
            error = RowError(lines.record_start, None, message)
            raise StockFileError([*result.errors, error]) from None
    return result


def _read(
    reader: Iterator[list[str]],
    lines: _Lines,
    result: ParseResult,
    format: str | None,
    max_errors: int,
    max_quantity: int,
    max_rows: int | None = None,
) -> None:
    while True:
        lines.start_record()
        header = next(reader, None)
        if header is None:
            raise _Fatal(1, "the file is empty: expected a header row")
        if any(h.strip() for h in header):
            break
    header_line = lines.record_start
    layout = _layout_of(header)
    if layout is None:
        raise _Fatal(header_line, _unknown_header(header))
    if format is not None and _format_of(layout) != format:
        raise _Fatal(header_line, f"the header is that of a {layout} file, not {format}")
    result.format, result.layout = _format_of(layout), layout
    columns = _columns(header, layout)
    reading = _Reader(result, max_quantity)
    handlers: dict[str, Callable[[_Record], None]] = {
        "generic": reading.generic,
        "shopify-inventory-2024": reading.shopify_inventory,
        "shopify-inventory-2023": reading.shopify_inventory,
        "shopify-products": reading.shopify_products,
        "woocommerce": reading.woocommerce,
    }
    handle = handlers[layout]
    width = len(header)
    count = 0
    while True:
        lines.start_record()
        values = next(reader, None)
        if values is None:
            break
        if not any(v.strip() for v in values):
            continue
        count += 1
        if max_rows is not None and count > max_rows:
            raise _Fatal(
                lines.record_start,
                f"more than {max_rows} rows: split the file (each file loads all or nothing)",
            )
        rec = _Record(lines.record_start, values, columns)
        if len(values) != width:
            rec.errors.append(
                RowError(rec.line, None, f"{len(values)} fields, but the header has {width}")
            )
        else:
            handle(rec)
        result.errors.extend(rec.errors)
        if len(result.errors) >= max_errors:
            del result.errors[max_errors:]
            result.stopped_at = rec.line
            reading.note(f"stopped reading at line {rec.line} after {max_errors} errors")
            break
    reading.finish(layout)
