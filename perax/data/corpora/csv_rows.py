"""Reading a corpus's CSV files row by row, with the line of every row for error messages."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence

from perax.core.errors import InputError, SkipCounter, handle


def read_csv_rows(
  path: os.PathLike | str,
  required: Sequence[str],
  *,
  lenient: bool = False,
  skipped: SkipCounter | None = None,
  encoding: str = 'utf-8-sig',
) -> Iterator[tuple[int, dict[str, str]]]:
  """Yields ``(line, row)`` for each data row of a CSV file with a header.

  ``line`` is the 1-based line where the row starts. Rows with the wrong number of fields raise an
  InputError naming file and line (counted in ``skipped`` and left out when ``lenient``). Values are
  the raw strings, surrounding blanks stripped; a header column named ``''`` (CREMA-D's unnamed row
  id) is kept under ``''``.

  Args:
    path: the CSV file.
    required: columns the header must have.
    lenient: skip malformed rows instead of raising.
    skipped: where skipped rows are counted (needed when ``lenient``).
    encoding: the file's text encoding (the default also drops a UTF-8 byte-order mark).

  Raises:
    InputError: missing file, missing header or required column, undecodable text, or (strict) a
      row with the wrong number of fields.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise InputError('no such file', path=path)
  with open(path, encoding=encoding, newline='') as f:
    reader = csv.reader(f)
    try:
      header = [name.strip() for name in next(reader)]
    except StopIteration:
      raise InputError('empty file, expected a CSV header', path=path, line=1) from None
    except UnicodeDecodeError as e:
      raise InputError(f'not {encoding} text: {e.reason}', path=path, line=1) from e
    missing = [name for name in required if name not in header]
    if missing:
      raise InputError(f'CSV header lacks columns {missing}; has {header}', path=path, line=1)
    start = reader.line_num + 1
    while True:
      try:
        fields = next(reader)
      except StopIteration:
        return
      except UnicodeDecodeError as e:
        raise InputError(f'not {encoding} text: {e.reason}', path=path, line=start) from e
      except csv.Error as e:
        raise InputError(f'malformed CSV: {e}', path=path, line=start) from e
      line, start = start, reader.line_num + 1
      if not fields or (len(fields) == 1 and not fields[0].strip()):
        continue
      if len(fields) != len(header):
        handle(
          InputError(f'expected {len(header)} fields, found {len(fields)}', path=path, line=line),
          lenient,
          skipped,
        )
        continue
      yield line, {name: value.strip() for name, value in zip(header, fields)}
