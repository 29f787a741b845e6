"""The analysis tables on disk (CSV, Markdown, JSON, each written atomically) and wide views of them."""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence

from perax.analysis import report as report_lib
from perax.core import atomic, jsonio


def write_rows(
  rows: Sequence[Mapping], columns: Sequence[str], out_dir: str, name: str, caption: str
) -> dict[str, str]:
  """Writes rows as <name>.csv, <name>.md and <name>.json in ``columns`` order; returns the paths.

  Missing values (None, NaN) are empty CSV cells, 'n/a' in Markdown and JSON nulls; the Markdown
  table carries ``caption`` (words naming what the table shows and its reference).
  """
  ordered = [{c: jsonio.jsonable(row.get(c)) for c in columns} for row in rows]
  paths = {ext: os.path.join(out_dir, f'{name}.{ext}') for ext in ('csv', 'md', 'json')}
  text = io.StringIO()
  writer = csv.DictWriter(text, fieldnames=list(columns), lineterminator='\n')
  writer.writeheader()
  writer.writerows({c: '' if v is None else v for c, v in row.items()} for row in ordered)
  atomic.write_text(paths['csv'], text.getvalue())
  atomic.write_text(paths['md'], report_lib.markdown_table(report_lib.Table(caption, ordered)) + '\n')
  jsonio.write_json(paths['json'], ordered)
  return paths


def _finite(value) -> bool:
  return value is not None and math.isfinite(value)


def interval_cell(value, low, high) -> str:
  """'value [low, high]'; 'value' when the interval is missing; 'n/a' when the value is."""
  if not _finite(value):
    return report_lib.NOT_AVAILABLE
  text = report_lib.format_value(value)
  if _finite(low) and _finite(high):
    text += f' [{report_lib.format_value(low)}, {report_lib.format_value(high)}]'
  return text


def pivot(
  rows: Sequence[Mapping], index: Sequence[str], column: str, metric: str | None = None
) -> list[dict]:
  """A wide table for reading, with cells 'value [ci_low, ci_high]' (see :func:`interval_cell`).

  One row per distinct ``index`` key, one column per value of ``column``; rows of other metrics than
  ``metric`` (when given) are left out.
  """
  wide: dict = {}
  for row in rows:
    if metric is not None and row['metric'] != metric:
      continue
    key = tuple(row[i] for i in index)
    cell = interval_cell(row['value'], row['ci_low'], row['ci_high'])
    wide.setdefault(key, dict(zip(index, key)))[str(row[column])] = cell
  return list(wide.values())
