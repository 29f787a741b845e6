"""Reading JSONL tables line by line: every error names its line, and a column keeps one type.

:func:`iter_jsonl` yields the objects of a UTF-8 JSONL file with their line numbers (a BOM is
accepted, as in CSV). :func:`drop_unconvertible` finds the line whose value breaks its column's type
(an int above, a string here), which Arrow would only report as a column-wide ArrowInvalid.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator

import pyarrow as pa

from perax.core.errors import InputError, SkipCounter, handle
from perax.data.text_lines import decoded_lines


def iter_jsonl(
  path: os.PathLike | str, lenient: bool = False, skipped: SkipCounter | None = None
) -> Iterator[tuple[int, dict]]:
  """Yields (1-based line, object) for each non-blank line of a UTF-8 JSONL file.

  A line that is not UTF-8, not JSON, not an object, or an object naming a key twice raises
  InputError naming the file and line, or with ``lenient`` is counted in ``skipped`` and passed
  over. A UTF-8 byte-order mark at the start is dropped, as for CSV.
  """
  for lineno, text, error in decoded_lines(path, 'utf-8'):
    if error is not None:
      handle(error, lenient, skipped)
      continue
    if not text.strip():
      continue
    try:
      row = json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as e:
      handle(InputError(f'invalid JSON: {e.msg}', path=path, line=lineno), lenient, skipped)
      continue
    except _RepeatedKey as e:
      handle(InputError(f'key {e.args[0]!r} appears twice', path=path, line=lineno), lenient, skipped)
      continue
    if not isinstance(row, dict):
      handle(InputError('expected a JSON object per line', path=path, line=lineno), lenient, skipped)
      continue
    yield lineno, row


class _RepeatedKey(ValueError):
  pass


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
  row = {}
  for key, value in pairs:
    if key in row:
      raise _RepeatedKey(key)
    row[key] = value
  return row


_ARROW_ERRORS = (
  pa.ArrowInvalid,
  pa.ArrowTypeError,
  pa.ArrowNotImplementedError,
  TypeError,
  ValueError,
  OverflowError,
)


def _converts(values: list) -> bool:
  try:
    pa.array(values)
  except _ARROW_ERRORS:
    return False
  return True


def first_unconvertible(values: list) -> int | None:
  """The index of the first value that no Arrow column can hold together with those before it.

  A JSON column whose rows mix types (an int, then a string) cannot become one Arrow column; this
  finds the row to name (binary search over prefixes: a prefix that fails stays failing). None when
  all of ``values`` convert.
  """
  if _converts(values):
    return None
  good, bad = 0, len(values)  # values[:good] converts, values[:bad] does not
  while bad - good > 1:
    middle = (good + bad) // 2
    if _converts(values[:middle]):
      good = middle
    else:
      bad = middle
  return bad - 1


def drop_unconvertible(
  rows: list[dict],
  where: list[dict],
  names: Iterable[str],
  path: os.PathLike | str,
  lenient: bool = False,
  skipped: SkipCounter | None = None,
) -> tuple[list[dict], list[dict]]:
  """Checks that each column ``names`` of ``rows`` has one type; returns the rows (and ``where``) kept.

  Args:
    rows: row dicts, as read from a JSONL file.
    where: per row, the InputError keywords naming it ({'line': 7} or {'item': 'row 3'}).
    names: the columns to check.
    path: the file, for the error.
    lenient: drop (and count in ``skipped``) each row whose value breaks its column, instead of raising.

  Raises:
    InputError: (strict) the file and line of the first value unlike those above it in its column.
  """
  rows, where = list(rows), list(where)
  for name in names:
    while (index := first_unconvertible([row.get(name) for row in rows])) is not None:
      value = rows[index].get(name)
      before = [row.get(name) for row in rows[:index]]
      kind = pa.array(before).type if any(v is not None for v in before) else 'nothing'
      shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + '...'
      error = InputError(
        f'column {name!r} holds {type(value).__name__} {shown}, unlike the {kind} above it',
        path=path,
        **where[index],
      )
      handle(error, lenient, skipped)
      del rows[index], where[index]
  return rows, where
