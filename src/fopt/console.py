"""Human and machine output shared by every command: tables, progress, JSON and CSV files."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from fopt.artifacts import write_json_atomic, write_text_atomic

# Not a terminal (CI logs, pipes): a wide fixed width so tables are not folded at 80 columns.
console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)           # tables and results: stdout
err_console = Console(stderr=True, highlight=False, soft_wrap=True)  # progress, warnings, notes: stderr


def warn(message: str) -> None:
    err_console.print(f"warning: {message}", markup=False)


def note(message: str) -> None:
    err_console.print(message, markup=False)


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}" if abs(value) < 1 else f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return str(value)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None,
                title: str | None = None, headers: dict[str, str] | None = None) -> None:
    """Print rows (dicts) as a table; `columns` selects and orders keys."""
    if not rows:
        console.print(f"{title or 'table'}: (no rows)", markup=False)
        return
    columns = list(columns or rows[0].keys())
    headers = headers or {}
    table = Table(title=title, show_lines=False)
    for c in columns:
        table.add_column(headers.get(c, c), overflow="fold")
    for r in rows:
        table.add_row(*(fmt(r.get(c)) for c in columns))
    console.print(table)


def progress(transient: bool = True) -> Progress:
    """A progress bar on stderr (disabled automatically when stderr is not a terminal)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                    console=err_console, transient=transient)


def write_json(path: str | Path | None, obj: Any) -> None:
    if path:
        write_json_atomic(path, obj)
        note(f"wrote {path}")


def write_csv(path: str | Path | None, rows: Iterable[dict[str, Any]],
              columns: Sequence[str] | None = None) -> None:
    """Write flat rows to CSV atomically; nested dicts are flattened as parent.child."""
    if not path:
        return
    flat = [_flatten(r) for r in rows]
    if columns is None:
        columns = []
        for r in flat:
            columns.extend(k for k in r if k not in columns)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    w.writeheader()
    w.writerows(flat)
    write_text_atomic(path, buf.getvalue())
    note(f"wrote {path}")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = ";".join(map(str, v))
        else:
            out[key] = v
    return out


# Shared click options (sqlite-utils style output_options).
json_option = click.option("--json", "json_path", type=click.Path(dir_okay=False),
                           help="Also write the result as JSON to this file.")
csv_option = click.option("--csv", "csv_path", type=click.Path(dir_okay=False),
                          help="Also write the result rows as CSV to this file.")
device_option = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu",
                             show_default=True, help="Where to run.")
force_option = click.option("--force", is_flag=True, help="Overwrite existing outputs.")


def echo(message: str = "") -> None:
    click.echo(message)


def stdout_is_tty() -> bool:
    return sys.stdout.isatty()


class NoBar:
    """Stands in for the progress bar off a terminal (logs, CI) and on ranks other than 0."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, *a, **k):
        return 0

    def advance(self, *a, **k):
        pass

    def update(self, *a, **k):
        pass


def epoch_bar(enabled: bool):
    """A progress bar when `enabled` and stderr is a terminal, else a stand-in that does nothing."""
    return progress() if enabled and err_console.is_terminal else NoBar()
