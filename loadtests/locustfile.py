"""flashstock load tests: the scenarios, re-exported for locust.

Start flashstock first (``flashstock serve`` and ``flashstock worker``) and give
the hot skus, then run headless from the repository root::

    FLASHSTOCK_HOT_SKUS=sku1,sku2,sku3 \\
    locust -f loadtests/locustfile.py --headless -u 200 -r 50 -t 60s \\
        --host http://127.0.0.1:8000 --csv loadtests/results/flash_sale

Options (environment):

- ``FLASHSTOCK_HOT_SKUS`` or ``FLASHSTOCK_HOT_SKUS_FILE``: the skus on sale.
- ``FLASHSTOCK_LOAD_COMMIT_SHARE`` (0.6) / ``FLASHSTOCK_LOAD_RELEASE_SHARE``
  (0.15): shares of carts checked out / emptied; the rest are abandoned.
- ``FLASHSTOCK_LOAD_LATE_SHARE`` (0.05): share of check-outs made after the hold expired.
- ``FLASHSTOCK_LOAD_TTL_SECONDS`` (15): the hold of a cart.
- ``FLASHSTOCK_LOAD_WAIT`` (0.2,1.5): seconds between a buyer's actions; ``0,0.05``
  turns the sale into a stress test.
- ``FLASHSTOCK_LOAD_TALLY``: where to write the units seen committed.

Then check the invariants (nothing oversold, Redis and the ledger agree)::

    python -m loadtests.check --host http://127.0.0.1:8000

or do all of it, against a fresh database, in one command::

    python loadtests/run_flash_sale.py

Expected refusals during the sell-out appear as their own rows,
``POST /v1/reservations [refused: insufficient_stock]``; see docs/loadtest.md.
"""

# locust puts this file's directory first on sys.path, so the package imports
# as ``scenarios``; from the repository root it is also ``loadtests.scenarios``.
try:
    from scenarios.flash_sale import FlashSaleUser
except ModuleNotFoundError:
    from loadtests.scenarios.flash_sale import FlashSaleUser

__all__ = ["FlashSaleUser"]
