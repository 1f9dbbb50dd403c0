"""Printing rich tables whole: each row on one line when the output is not a terminal."""

from __future__ import annotations

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

# Wider than any table mcgen prints: the width a table is measured at, unconstrained.
_UNBOUNDED = 100_000


def print_table(console: Console, table: Table) -> None:
    """Print `table`. On a terminal it fits the window; in a pipe, a file or a CI log rich
    would wrap it at 80 columns, so it is printed at its natural width there instead."""
    if console.is_terminal:
        console.print(table)
        return
    natural = Measurement.get(console, console.options.update_width(_UNBOUNDED), table).maximum
    # Widen the console itself for this table (not a second console on its file): what it
    # records and how it colours stay as the caller set them.
    width = console.width
    console.width = max(natural, width)
    try:
        console.print(table)
    finally:
        console.width = width
