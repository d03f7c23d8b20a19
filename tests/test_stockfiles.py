"""Stock file readers: each format, each quirk of real exports, and the real files themselves."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from flashstock.stockfiles import (
    MAX_LINE_BYTES,
    MAX_NOTES,
    SKIP_EXTERNAL,
    SKIP_GROUPED,
    SKIP_IMAGE_ROW,
    SKIP_NO_SKU,
    SKIP_NOT_STOCKED,
    SKIP_PARENT_STOCK,
    SKIP_VARIABLE,
    ParseResult,
    RowError,
    Skipped,
    StockFileError,
    StockRow,
    detect_format,
    parse_stock_file,
)

FIXTURES = Path(__file__).parent / "fixtures" / "stockfiles"
# The public exports: beside the clone as ../shared/data, or wherever FLASHSTOCK_TEST_DATA says.
DATA = Path(
    os.environ.get("FLASHSTOCK_TEST_DATA") or Path(__file__).parents[1] / ".." / "shared" / "data"
)

GENERIC_HEADER = "sku,location,on_hand\n"
SHOPIFY_2024_HEADER = (
    "Handle,Title,Option1 Name,Option1 Value,Option2 Name,Option2 Value,Option3 Name,"
    "Option3 Value,SKU,HS Code,COO,Location,Bin name,Incoming (not editable),"
    "Unavailable (not editable),Committed (not editable),Available (not editable),"
    "On hand (current),On hand (new)\n"
)
WOO_HEADER = "Type,SKU,Name,Description,In stock?,Stock,Backorders allowed?\n"


def parse(text: str, format: str | None = None, **kwargs: int) -> ParseResult:
    return parse_stock_file(text.encode(), format, **kwargs)


def shopify_row(sku: str, on_hand: str, *, committed: str = "0", handle: str = "h") -> str:
    return (
        f"{handle},T,Title,Default Title,,,,,{sku},,,Shop,,0,0,{committed},{on_hand},{on_hand},\n"
    )


def fatal(data: bytes | str, format: str | None = None) -> list[RowError]:
    with pytest.raises(StockFileError) as caught:
        parse_stock_file(data.encode() if isinstance(data, str) else data, format)
    return caught.value.errors


# -- format detection -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (["sku", "location", "on_hand"], "generic"),
        (["\ufeffSKU ", " On_Hand"], "generic"),
        (["sku", "backorder"], "generic"),
        (SHOPIFY_2024_HEADER.strip().split(","), "shopify"),
        (["Handle", "SKU", "Location", "Available", "On hand"], "shopify"),
        (["Handle", "Title", "Variant SKU", "Variant Inventory Qty"], "shopify"),
        (["ID", "Type", "SKU", "Name", "In stock?", "Stock"], "woocommerce"),
        (["type", "sku", "in stock?"], "woocommerce"),
    ],
)
def test_detect_format_from_the_header(header: list[str], expected: str) -> None:
    assert detect_format(header) == expected


@pytest.mark.parametrize(
    "header",
    [
        ["source_code", "sku", "status", "quantity"],  # Magento MSI
        ["InvoiceNo", "StockCode", "Quantity"],
        ["sku", "qty"],
        ["sku", "location", "onhand"],
        [],
    ],
)
def test_detect_format_refuses_an_unknown_header(header: list[str]) -> None:
    with pytest.raises(ValueError, match="unrecognised header"):
        detect_format(header)


# -- generic ----------------------------------------------------------------------------------


def test_generic_fixture() -> None:
    result = parse_stock_file(FIXTURES / "generic.csv")
    assert (result.format, result.layout, result.errors, result.skipped) == (
        "generic",
        "generic",
        [],
        [],
    )
    assert result.rows == [
        StockRow(
            2,
            "TEE-RED-M",
            "berlin",
            120,
            5,
            {
                "backorder": "allow",
                "backorder_limit": 20,
                "low_stock_threshold": 10,
                "per_customer_limit": 2,
                "ships_in_days": 7,
                "restock_date": "2025-03-01",
            },
        ),
        StockRow(3, "TEE-RED-M", "paris", 40, None, {}),
        StockRow(4, "MUG-01", "default", 7, None, {}),
        StockRow(5, 'POSTER "A2"', "default", 3, None, {"backorder": "deny"}),
        # Policy only: no level, and "none" clears the backorder limit.
        StockRow(
            6, "GIFT-CARD", "default", None, None, {"backorder": "notify", "backorder_limit": None}
        ),
    ]


def test_generic_location_column_is_optional() -> None:
    result = parse("SKU,On_Hand\nA,1\n")
    assert result.rows == [StockRow(2, "A", "default", 1)]


@pytest.mark.parametrize(
    ("row", "column", "message"),
    [
        ("A,x,5.5", "on_hand", "whole number"),
        ("A,x,abc", "on_hand", "whole number"),
        ("A,x,1e3", "on_hand", "whole number"),
        ("A,x,1 000", "on_hand", "whole number"),
        ("A,x,-1", "on_hand", "at least 0"),
        ("A,x,1000001", "on_hand", "at most 1000000"),
        ("A,x,1,-2,,,,,,", "safety_stock", "at least 0"),
        ("A,x,1,,maybe,,,,,", "backorder", "deny, allow or notify"),
        ("A,x,1,,,-1,,,,", "backorder_limit", "at least 0"),
        ("A,x,1,,,,,0,,", "per_customer_limit", "at least 1"),
        ("A,x,1,,,,,,2025-02-30,", "restock_date", "YYYY-MM-DD"),
        ("A,x,1,,,,,,01/03/2025,", "restock_date", "YYYY-MM-DD"),
        ("A,x,1,,,,,,,soon", "ships_in_days", "whole number"),
    ],
)
def test_generic_bad_values_are_errors_with_line_and_column(
    row: str, column: str, message: str
) -> None:
    header = (
        "sku,location,on_hand,safety_stock,backorder,backorder_limit,"
        "low_stock_threshold,per_customer_limit,restock_date,ships_in_days\n"
    )
    if row.count(",") == 2:
        header = GENERIC_HEADER
    result = parse(f"{header}OK,x,1{',' * (header.count(',') - 2)}\n{row}\n")
    assert [(e.line, e.column) for e in result.errors] == [(3, column)]
    assert message in result.errors[0].message
    assert [r.sku for r in result.rows] == ["OK"]


@pytest.mark.parametrize(
    ("row", "column"),
    [("A,x,,", "on_hand"), ("A,x,,3", "safety_stock")],
)
def test_generic_row_without_on_hand_must_set_a_policy(row: str, column: str) -> None:
    result = parse(f"sku,location,on_hand,safety_stock\n{row}\n")
    assert [(e.line, e.column) for e in result.errors] == [(2, column)]


def test_generic_duplicate_level_is_an_error_naming_both_lines() -> None:
    result = parse(GENERIC_HEADER + "A,x,1\nB,x,2\nA,x,3\nA,y,4\n")
    assert result.errors == [RowError(4, "sku", "'A' at location 'x' is also on line 2")]


def test_generic_default_location_counts_for_duplicates() -> None:
    result = parse(GENERIC_HEADER + "A,,1\nA,default,3\n")
    assert [(e.line, "line 2" in e.message) for e in result.errors] == [(3, True)]


def test_generic_conflicting_policy_is_an_error_naming_both_lines() -> None:
    result = parse("sku,location,on_hand,backorder\nA,x,1,allow\nA,y,2,\nA,z,3,deny\n")
    assert len(result.errors) == 1
    error = result.errors[0]
    assert (error.line, error.column) == (4, "backorder")
    assert "'deny' contradicts 'allow' on line 2" in error.message


def test_generic_same_policy_on_several_locations_is_fine() -> None:
    result = parse("sku,location,on_hand,backorder\nA,x,1,allow\nA,y,2,Allow\n")
    assert result.errors == []
    assert [r.policy for r in result.rows] == [{"backorder": "allow"}] * 2


def test_generic_unknown_column_is_an_error() -> None:
    errors = fatal("sku,location,on_hand,backorders\nA,x,1,1\n")
    assert [(e.line, e.column) for e in errors] == [(1, "backorders")]
    assert "unknown column" in errors[0].message


def test_generic_empty_sku_is_an_error_not_a_skip() -> None:
    result = parse(GENERIC_HEADER + ",x,1\n")
    assert result.skipped == []
    assert [(e.line, e.column, e.message) for e in result.errors] == [
        (2, "sku", "sku must not be empty")
    ]


# -- ids --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sku", "message"),
    [
        ("A ", "white space"),
        (" A", "white space"),
        ("A\x07B", "printable"),
        ("X" * 129, "at most 128"),
    ],
)
def test_invalid_skus_are_errors_with_line(sku: str, message: str) -> None:
    quoted = '"' + sku + '"'
    generic = parse(f"{GENERIC_HEADER}OK,x,1\n{quoted},x,1\n")
    shopify = parse(SHOPIFY_2024_HEADER + shopify_row("OK", "1") + shopify_row(quoted, "1"))
    for result, column in ((generic, "sku"), (shopify, "SKU")):
        assert [(e.line, e.column) for e in result.errors] == [(3, column)]
        assert message in result.errors[0].message


def test_invalid_location_is_an_error_with_line() -> None:
    result = parse(GENERIC_HEADER + 'A,x,1\nB,"a\tb",1\n')
    assert [(e.line, e.column) for e in result.errors] == [(3, "location")]


# -- Shopify ----------------------------------------------------------------------------------


def test_shopify_2024_fixture() -> None:
    result = parse_stock_file(FIXTURES / "shopify_inventory_2024.csv")
    assert (result.format, result.layout, result.errors) == (
        "shopify",
        "shopify-inventory-2024",
        [],
    )
    assert [(r.line, r.sku, r.location, r.on_hand, r.policy) for r in result.rows] == [
        (2, "KITE-DELTA-RED", "Harbour Street", 12, {}),
        (3, "KITE-DELTA-BLUE", "Harbour Street", 8, {}),  # 12 on hand - 3 committed - 1 held
        (4, "KITE-DELTA-BLUE", "Pier Warehouse", 30, {}),
        (6, "KITE-STUNT", "Harbour Street", 0, {}),  # -3 on hand - 2 committed
        (8, "LINE-30", "Harbour Street", 10, {}),  # lines 8 and 9 share the SKU
        (10, "SOCK-1", "Harbour Street", 7, {}),  # On hand (new) filled in
        (11, "SPOOL-L", "Harbour Street", 4, {}),  # written 4.0000
    ]
    assert result.skipped == [
        Skipped(5, "KITE-BOX", SKIP_NOT_STOCKED),
        Skipped(7, None, SKIP_NO_SKU),
    ]
    assert result.notes[:2] == [
        "line 6: 'KITE-STUNT' at 'Harbour Street' has -5 in stock (sold ahead of stock); "
        "loaded as 0",
        "lines 8 and 9: 'LINE-30' at 'Harbour Street' is on both (two products share the SKU); "
        "loaded once, quantities summed: 10",
    ]
    assert result.notes[2].startswith("2 rows: Shopify's Committed and Unavailable")
    assert result.notes[3].startswith("1 row: On hand (new) was loaded")
    assert len(result.notes) == 4


def test_shopify_2023_fixture() -> None:
    result = parse_stock_file(FIXTURES / "shopify_inventory_2023.csv")
    assert (result.format, result.layout, result.errors) == (
        "shopify",
        "shopify-inventory-2023",
        [],
    )
    assert [(r.line, r.sku, r.on_hand) for r in result.rows] == [
        (3, "RING-G", 0),  # 1 on hand, 1 committed
        (4, "PEND-P", 0),  # -2 on hand
        (5, "BROOCH-O", 5),  # 3 + 2 on line 6
    ]
    assert result.skipped == [Skipped(2, None, SKIP_NO_SKU)]  # SKU written ""


def test_shopify_not_stocked_is_skipped_not_zero() -> None:
    result = parse(
        SHOPIFY_2024_HEADER
        + "h,T,Title,Default Title,,,,,A,,,Shop,,not stocked,not stocked,not stocked,"
        "not stocked,not stocked,\n"
    )
    assert (result.rows, result.errors) == ([], [])
    assert result.skipped == [Skipped(2, "A", SKIP_NOT_STOCKED)]


def test_shopify_negative_on_hand_loads_zero_with_a_note() -> None:
    result = parse(SHOPIFY_2024_HEADER + shopify_row("A", "-398") + shopify_row("B", "-0"))
    assert [(r.sku, r.on_hand) for r in result.rows] == [("A", 0), ("B", 0)]
    assert result.errors == []
    assert result.notes == [
        "line 2: 'A' at 'Shop' has -398 in stock (sold ahead of stock); loaded as 0"
    ]


def test_shopify_committed_units_are_not_sold_again() -> None:
    result = parse(SHOPIFY_2024_HEADER + shopify_row("A", "100", committed="94"))
    assert [r.on_hand for r in result.rows] == [6]


def test_shopify_duplicates_clamp_each_product_before_summing() -> None:
    result = parse(SHOPIFY_2024_HEADER + shopify_row("A", "-2") + shopify_row("A", "3"))
    assert [(r.line, r.on_hand) for r in result.rows] == [(2, 3)]
    assert any(n.startswith("lines 2 and 3: 'A'") for n in result.notes)


def test_shopify_empty_quantity_is_an_error() -> None:
    result = parse(SHOPIFY_2024_HEADER + "h,T,Title,Default Title,,,,,A,,,Shop,,0,0,0,,,\n")
    assert [(e.line, e.column) for e in result.errors] == [(2, "On hand (current)")]


def test_shopify_products_fixture() -> None:
    data = (FIXTURES / "shopify_products.csv").read_bytes()
    assert b"\r\n" in data and b"E+12" in data  # the quirks this fixture is about
    result = parse_stock_file(data)
    assert (result.format, result.layout, result.errors) == ("shopify", "shopify-products", [])
    assert [(r.line, r.sku, r.location, r.on_hand, r.policy) for r in result.rows] == [
        # Record 1 spans lines 2-4 (a quoted body with line breaks); line 10 shares its SKU.
        (2, "BOOT-TR-41", "default", 9, {"backorder": "deny"}),
        (5, "BOOT-TR-42", "default", 0, {"backorder": "allow"}),  # continue -> allow
        (6, "BOOT-TR-43", "default", 0, {"backorder": "allow"}),  # -2 -> 0
        (8, "SOCK-W", "default", None, {"backorder": "deny"}),  # tracker empty: not tracked
        (11, "MAP-CASE", "default", 2, {"backorder": "deny"}),  # 2.0000
    ]
    assert result.skipped == [Skipped(7, None, SKIP_IMAGE_ROW), Skipped(9, None, SKIP_NO_SKU)]
    assert len(result.notes) == 2
    assert "policy kept: {'backorder': 'deny'}" in result.notes[1]


def test_shopify_products_bad_policy_and_missing_quantity_are_errors() -> None:
    header = "Handle,Option1 Value,Variant SKU,Variant Inventory Tracker,"
    header += "Variant Inventory Qty,Variant Inventory Policy\n"
    result = parse(header + "h,S,A,shopify,1,sometimes\nh,M,B,shopify,,deny\n")
    assert [(e.line, e.column) for e in result.errors] == [
        (2, "Variant Inventory Policy"),
        (3, "Variant Inventory Qty"),
    ]


# -- WooCommerce ------------------------------------------------------------------------------


def test_woocommerce_fixture() -> None:
    data = (FIXTURES / "woocommerce.csv").read_bytes()
    assert data.startswith(b"\xef\xbb\xbf")
    result = parse_stock_file(data)
    assert (result.format, result.layout, result.errors) == ("woocommerce", "woocommerce", [])
    assert [(r.line, r.sku, r.on_hand, r.policy) for r in result.rows] == [
        (2, "MUG-ENAMEL", 24, {"backorder": "deny", "low_stock_threshold": 5}),
        (3, "EBOOK-CAMP", None, {"backorder": "deny"}),  # Stock empty: unmanaged
        (6, "TENT-2P-GRN", 7, {"backorder": "notify"}),
        (9, "STOVE-MINI", 0, {"backorder": "deny"}),  # unmanaged, out of stock
        (10, "LANTERN", 0, {"backorder": "notify"}),  # unmanaged, on backorder
        (11, "FIRESTEEL", 0, {"backorder": "allow"}),  # -4
        (12, "CUP-TI", 5, {"backorder": "deny", "low_stock_threshold": 2}),  # 5.0000
    ]
    assert result.skipped == [
        Skipped(5, "TENT-2P", SKIP_VARIABLE),
        Skipped(7, None, SKIP_NO_SKU),  # a variation without a SKU
        Skipped(8, "TENT-2P-SND", SKIP_PARENT_STOCK),
        Skipped(13, "CAMP-SET", SKIP_GROUPED),
        Skipped(14, "MAP-ONLINE", SKIP_EXTERNAL),
    ]
    assert result.notes == [
        "line 11: 'FIRESTEEL' at 'default' has -4 in stock (sold ahead of stock); loaded as 0"
    ]


@pytest.mark.parametrize(
    ("row", "column"),
    [
        ("simple,A,n,,1,5.5,0", "Stock"),
        ("simple,A,n,,1,lots,0", "Stock"),
        ("simple,A,n,,1,5,2", "Backorders allowed?"),
        ("simple,A,n,,maybe,,0", "In stock?"),
    ],
)
def test_woocommerce_bad_values_are_errors(row: str, column: str) -> None:
    result = parse(WOO_HEADER + row + "\n")
    assert [(e.line, e.column) for e in result.errors] == [(2, column)]


def test_woocommerce_variable_product_with_own_stock_is_loaded() -> None:
    result = parse(WOO_HEADER + "variable,P,n,,1,12,0\nvariation,P-S,n,,1,parent,0\n")
    assert [(r.sku, r.on_hand) for r in result.rows] == [("P", 12)]
    assert result.skipped == [Skipped(3, "P-S", SKIP_PARENT_STOCK)]


# -- CSV and encoding quirks ------------------------------------------------------------------


def test_embedded_line_breaks_keep_line_numbers_right() -> None:
    text = WOO_HEADER + (
        'simple,A,n,"one\ntwo\nthree",1,1,0\n'
        'simple,B,n,"x\r\ny",1,oops,0\n'
        "simple,C,n,,1,3,0\n"
        "simple,D,n,,1,bad,0\n"
    )
    result = parse(text)
    assert [r.line for r in result.rows] == [2, 7]
    assert [e.line for e in result.errors] == [5, 8]


def test_crlf_and_lf_read_the_same() -> None:
    text = GENERIC_HEADER + "A,x,1\nB,x,2\n"
    assert parse(text).rows == parse(text.replace("\n", "\r\n")).rows


def test_old_mac_line_endings_are_refused_with_advice() -> None:
    errors = fatal(b"sku,location,on_hand\rA,x,1\r")
    assert [e.line for e in errors] == [1]
    assert "line endings" in errors[0].message


def test_bom_is_ignored() -> None:
    result = parse_stock_file(b"\xef\xbb\xbf" + (GENERIC_HEADER + "A,x,1\n").encode())
    assert (result.format, result.rows) == ("generic", [StockRow(2, "A", "x", 1)])


def test_blank_lines_are_ignored_and_still_counted() -> None:
    result = parse("\n" + GENERIC_HEADER + "A,x,1\n\n,,\nB,x,oops\n")
    assert [r.line for r in result.rows] == [3]
    assert [e.line for e in result.errors] == [6]


def test_non_utf8_file_is_one_clear_error_at_its_line() -> None:
    data = (GENERIC_HEADER + "A,x,1\nCAFÉ,x,2\n").encode("cp1252")
    errors = fatal(data)
    assert len(errors) == 1
    assert errors[0].line == 3
    assert "not UTF-8" in errors[0].message and "0xC9" in errors[0].message


def test_utf16_file_is_refused_with_advice() -> None:
    errors = fatal((GENERIC_HEADER + "A,x,1\n").encode("utf-16"))
    assert [e.line for e in errors] == [1]
    assert "UTF-16" in errors[0].message


def test_utf16_without_bom_is_refused() -> None:
    errors = fatal((GENERIC_HEADER + "A,x,1\n").encode("utf-16-le"))
    assert "UTF-16" in errors[0].message


def test_spreadsheet_workbook_is_refused() -> None:
    errors = fatal(b"PK\x03\x04\x14\x00\x06\x00rest of a zip")
    assert "not CSV" in errors[0].message


def test_empty_file_is_an_error() -> None:
    assert [e.line for e in fatal(b"")] == [1]
    assert "empty" in fatal(b"\n\n")[0].message


def test_header_only_loads_nothing() -> None:
    result = parse(GENERIC_HEADER)
    assert (result.rows, result.skipped, result.errors) == ([], [], [])


def test_unknown_header_is_one_clear_error() -> None:
    errors = fatal("product,count\nA,1\n")
    assert [(e.line, e.column) for e in errors] == [(1, None)]
    assert "unrecognised header (product, count)" in errors[0].message


def test_semicolon_separated_file_gets_a_hint() -> None:
    errors = fatal("sku;location;on_hand\nA;x;1\n")
    assert "semicolons" in errors[0].message


def test_forced_format_must_match_the_header() -> None:
    errors = fatal(GENERIC_HEADER + "A,x,1\n", "shopify")
    assert "not shopify" in errors[0].message
    assert parse(GENERIC_HEADER + "A,x,1\n", "generic").rows == [StockRow(2, "A", "x", 1)]


def test_unknown_format_name_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown stock file format"):
        parse(GENERIC_HEADER, "magento")


def test_duplicated_header_column_is_an_error() -> None:
    errors = fatal("sku,on_hand,on_hand\nA,1,2\n")
    assert [(e.line, e.column) for e in errors] == [(1, "on_hand")]


def test_wrong_field_count_is_an_error() -> None:
    result = parse(GENERIC_HEADER + "A,x,1,2\nB,x\nC,x,3\n")
    assert [(e.line, e.message) for e in result.errors] == [
        (2, "4 fields, but the header has 3"),
        (3, "2 fields, but the header has 3"),
    ]
    assert [r.sku for r in result.rows] == ["C"]


def test_unclosed_quote_is_reported_where_it_opens() -> None:
    result = parse(GENERIC_HEADER + 'A,x,1\n"B,x,2\nC,x,3\n')
    assert [e.line for e in result.errors] == [3]


# -- limits -----------------------------------------------------------------------------------


def test_max_errors_caps_the_errors_and_stops_reading() -> None:
    text = GENERIC_HEADER + "".join(f"S{i},x,bad\n" for i in range(50))
    result = parse(text, max_errors=5)
    assert [e.line for e in result.errors] == [2, 3, 4, 5, 6]
    assert result.stopped_at == 6
    assert result.notes == ["stopped reading at line 6 after 5 errors"]


def test_notes_are_capped() -> None:
    result = parse(SHOPIFY_2024_HEADER + "".join(shopify_row(f"S{i}", "-1") for i in range(250)))
    assert len(result.rows) == 250
    assert len(result.notes) == MAX_NOTES + 1
    assert result.notes[-1] == "... and 50 more notes"


def test_overlong_line_stops_reading_with_an_error() -> None:
    data = (GENERIC_HEADER + "A,x,1\nB,x,1" + " " * MAX_LINE_BYTES + "\n").encode()
    errors = fatal(data)
    assert [e.line for e in errors] == [3]
    assert "longer than" in errors[0].message


def test_overlong_field_stops_reading_with_an_error() -> None:
    data = (WOO_HEADER + 'simple,A,n,"' + "x" * 200_000 + '",1,1,0\n').encode()
    errors = fatal(data)
    assert [e.line for e in errors] == [2]
    assert "field is longer than" in errors[0].message


def test_errors_found_before_a_fatal_one_are_kept() -> None:
    errors = fatal((GENERIC_HEADER + "A,x,bad\n").encode() + b"B\xff,x,1\n")
    assert [e.line for e in errors] == [2, 3]


def test_max_quantity_is_configurable() -> None:
    result = parse(GENERIC_HEADER + "A,x,50\n", max_quantity=10)
    assert [(e.line, e.column) for e in result.errors] == [(2, "on_hand")]


# -- sources and errors -----------------------------------------------------------------------


def test_every_kind_of_source_reads_the_same(tmp_path: Path) -> None:
    text = GENERIC_HEADER + "A,x,1\n"
    path = tmp_path / "stock.csv"
    path.write_text(text)
    stream = io.BytesIO(text.encode())
    expected = [StockRow(2, "A", "x", 1)]
    for source in (text.encode(), text, path, str(path), stream):
        assert parse_stock_file(source).rows == expected
    assert not stream.closed


def test_text_stream_is_refused() -> None:
    with pytest.raises(TypeError, match="binary mode"):
        parse_stock_file(io.StringIO(GENERIC_HEADER))  # type: ignore[arg-type]


def test_stock_file_error_lists_line_numbers() -> None:
    result = parse(GENERIC_HEADER + "A,x,1\nB,x,-1\nC,x,1.5\n")
    with pytest.raises(StockFileError) as caught:
        result.raise_for_errors()
    assert caught.value.errors == result.errors
    assert str(caught.value) == (
        "line 3, on_hand: must be at least 0 (got '-1')\n"
        "line 4, on_hand: must be a whole number (got '1.5')"
    )
    assert not result.ok
    parse(GENERIC_HEADER + "A,x,1\n").raise_for_errors()


# -- the real exports in ../shared/data -------------------------------------------------------

# file: (rows, {skip reason: count}, errors, notes)
REAL_FILES = {
    "woocommerce/sample_products.csv": (
        21,
        {SKIP_VARIABLE: 2, SKIP_GROUPED: 1, SKIP_EXTERNAL: 1},
        0,
        0,
    ),
    "woocommerce/sample.csv": (
        2,
        {SKIP_EXTERNAL: 1, SKIP_VARIABLE: 1, SKIP_NO_SKU: 2, SKIP_GROUPED: 1},
        0,
        0,
    ),
    # 32 rows sold ahead of stock, 3 SKUs on two rows each, 84 rows with committed units.
    "shopify-inventory-2024-nsls/inventory_export_1.csv": (
        1527,
        {SKIP_NOT_STOCKED: 194, SKIP_NO_SKU: 8},
        0,
        32 + 3 + 1,
    ),
    # 14 rows sold ahead of stock, 2 SKUs on two rows each, 12 rows with committed units.
    "shopify-inventory-2023-jewellery/inventory_export_1.csv": (
        251,
        {SKIP_NO_SKU: 631},
        0,
        14 + 2 + 1,
    ),
    "shopify-export-2023-demo/inventory_export_1.csv": (0, {SKIP_NO_SKU: 67}, 0, 1),
    "shopify-export-2023-demo/products_export_1.csv": (
        0,
        {SKIP_NO_SKU: 95, SKIP_IMAGE_ROW: 20},
        0,
        1,
    ),
    "shopify-product-template/product_template.csv": (16, {SKIP_IMAGE_ROW: 1}, 0, 0),
    "shopify-product-export-packt/Product-data.csv": (0, {SKIP_NO_SKU: 21}, 0, 1),
}


def real_file(name: str) -> Path:
    path = DATA / name
    if not path.is_file():
        pytest.skip(f"real export {name} not present in {DATA}")
    return path


@pytest.mark.parametrize("name", sorted(REAL_FILES))
def test_real_file_counts(name: str) -> None:
    rows, skipped, errors, notes = REAL_FILES[name]
    result = parse_stock_file(real_file(name))
    assert result.errors[:5] == [] and len(result.errors) == errors
    assert len(result.rows) == rows
    assert result.skipped_by_reason() == skipped
    assert len(result.notes) == notes


def test_real_shopify_2024_levels() -> None:
    result = parse_stock_file(real_file("shopify-inventory-2024-nsls/inventory_export_1.csv"))
    by_key = {(r.sku, r.location): r for r in result.rows}
    first = by_key["book-McConaughey-Poems-Prayers", "Underground Sports Shop"]
    assert (first.line, first.on_hand) == (2, 609)
    assert {r.location for r in result.rows} == {"Underground Sports Shop"}
    # Sum of max(Available, 0), checked with a spreadsheet; Available = On hand - Committed.
    assert sum(r.on_hand or 0 for r in result.rows) == 146058
    assert [n.split(":")[0] for n in result.notes if "share the SKU" in n] == [
        "lines 33 and 202",
        "lines 34 and 203",
        "lines 687 and 1239",
    ]
    assert all(r.policy == {} for r in result.rows)


def test_real_shopify_2023_levels() -> None:
    result = parse_stock_file(real_file("shopify-inventory-2023-jewellery/inventory_export_1.csv"))
    assert sum(r.on_hand or 0 for r in result.rows) == 170
    assert sorted(n.split(":")[0] for n in result.notes if "share the SKU" in n) == [
        "lines 367 and 368",
        "lines 62 and 861",
    ]
    assert sum("sold ahead of stock" in n for n in result.notes) == 14


def test_real_shopify_product_files() -> None:
    template = parse_stock_file(real_file("shopify-product-template/product_template.csv"))
    tracked = [(r.sku, r.on_hand) for r in template.rows if r.on_hand is not None]
    assert tracked == [
        ("PNT_DEN_285", 20),
        ("PNT_DEN_305", 15),
        ("PNT_DEN_405", 10),
        ("HAT_GRY_275", 50),
    ]
    assert {r.policy["backorder"] for r in template.rows} == {"deny"}
    assert template.skipped == [Skipped(17, None, SKIP_IMAGE_ROW)]
    packt = parse_stock_file(real_file("shopify-product-export-packt/Product-data.csv"))
    # The second product's description spans lines 3-8: the third product starts on line 9.
    assert [s.line for s in packt.skipped[:3]] == [2, 3, 9]


def test_real_woocommerce_files() -> None:
    sample = parse_stock_file(real_file("woocommerce/sample.csv"))
    assert sample.rows == [
        StockRow(2, "WOOLOGO", "default", 5, None, {"backorder": "notify"}),
        StockRow(3, "WOOALBUM", "default", None, None, {}),
    ]
    products = parse_stock_file(real_file("woocommerce/sample_products.csv"))
    assert {(r.on_hand, tuple(r.policy.items())) for r in products.rows} == {
        (None, (("backorder", "deny"),))
    }


@pytest.mark.parametrize(
    "name", ["magento-msi/export_full.csv", "online-retail-uci/OnlineRetail.csv"]
)
def test_real_files_of_other_platforms_are_refused_by_header(name: str) -> None:
    with pytest.raises(StockFileError) as caught:
        parse_stock_file(real_file(name))
    assert [e.line for e in caught.value.errors] == [1]
    assert "unrecognised header" in str(caught.value)
