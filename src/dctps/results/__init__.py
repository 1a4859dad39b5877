"""Results of training runs: the SQLite :class:`Store` (one row per run, one per epoch)."""

from dctps.results.store import (
    EPOCH_COLUMNS,
    RUN_COLUMNS,
    Store,
    format_table,
    parse_where,
    print_results,
)

__all__ = ["EPOCH_COLUMNS", "RUN_COLUMNS", "Store", "format_table", "parse_where", "print_results"]
