"""Reading a corpus's CSV files row by row, with the line of every row for error messages."""

from __future__ import annotations

import collections
import csv
import os
from collections.abc import Iterator, Sequence

from perax.core.errors import InputError, SkipCounter, handle
from perax.data.text_lines import decoded_lines


class _Lines:
  """The decoded lines fed to csv.reader, remembering which physical lines each record took.

  A record that turns out malformed in lenient mode gives back all its lines but the first
  (:meth:`give_back`), so an unclosed quote costs one line, not the rest of the file.
  """

  def __init__(self, path: str, encoding: str, lenient: bool):
    self._source = decoded_lines(path, encoding)
    self._pending = collections.deque()
    self._lenient = lenient
    self.taken: list[tuple[int, str, InputError | None]] = []
    self.error: InputError | None = None  # the first undecodable line of the current record

  def __iter__(self):
    return self

  def __next__(self) -> str:
    item = self._pending.popleft() if self._pending else next(self._source)
    if item[2] is not None:
      if not self._lenient or item[0] == 1:
        raise item[2]
      self.error = self.error or item[2]
    self.taken.append(item)
    return item[1]

  def start_record(self) -> None:
    self.taken = []
    self.error = None

  def give_back(self) -> None:
    """Returns the current record's lines after its first to be read again."""
    self._pending.extendleft(reversed(self.taken[1:]))


def read_csv_rows(
  path: os.PathLike | str,
  required: Sequence[str],
  *,
  lenient: bool = False,
  skipped: SkipCounter | None = None,
  encoding: str = 'utf-8-sig',
  multiline: bool = False,
) -> Iterator[tuple[int, dict[str, str]]]:
  """Yields ``(line, row)`` for each data row of a CSV file with a header.

  ``line`` is the 1-based line where the row starts. A row with the wrong number of fields, an
  undecodable byte, a quote left open to the end of the file, a stray quote (``"ab"c``) or, unless
  ``multiline``, a quoted field running over several lines raises an InputError naming file and line
  (with ``lenient``: counted in ``skipped`` and left out; a quote left open then costs its first line
  only, the lines after it are read again). Values are
  the raw strings, surrounding blanks stripped; a header column named ``''`` (CREMA-D's unnamed row
  id) is kept under ``''``. Blank lines are passed over.

  Args:
    path: the CSV file.
    required: columns the header must have.
    lenient: skip malformed rows instead of raising.
    skipped: where skipped rows are counted (needed when ``lenient``).
    encoding: the file's text encoding; a UTF-8 byte-order mark is dropped (see
      :mod:`perax.data.text_lines`, which also makes decoding errors name their own line).
    multiline: allow quoted fields holding line breaks (free text such as transcripts); corpus
      files have none, so there a row over several lines is a quote left open.

  Raises:
    InputError: missing file, missing header or required column, an undecodable header, a header
      naming a column twice, or (strict) a malformed row.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise InputError('no such file', path=path)
  lines = _Lines(path, encoding, lenient)
  reader = csv.reader(lines, strict=True)
  try:
    header = [name.strip() for name in next(reader)]
  except StopIteration:
    raise InputError('empty file, expected a CSV header', path=path, line=1) from None
  except csv.Error as e:
    raise InputError(f'malformed CSV header: {e}', path=path, line=1) from e
  repeated = sorted({name for name in header if header.count(name) > 1})
  if repeated:
    raise InputError(f'CSV header names columns {repeated} twice', path=path, line=1)
  missing = [name for name in required if name not in header]
  if missing:
    raise InputError(f'CSV header lacks columns {missing}; has {header}', path=path, line=1)
  width = len(header)
  while True:
    lines.start_record()
    try:
      fields = next(reader)
    except StopIteration:
      return
    except csv.Error as e:
      line = lines.taken[0][0] if lines.taken else reader.line_num
      handle(InputError(f'malformed CSV: {e}', path=path, line=line), lenient, skipped)
      lines.give_back()
      continue
    taken = lines.taken
    line = taken[0][0]
    if len(fields) == width and len(taken) == 1 and lines.error is None:  # the common case
      yield line, {name: value.strip() for name, value in zip(header, fields)}
      continue
    if not fields or (len(fields) == 1 and not fields[0].strip()):
      continue
    if lines.error is not None:
      handle(lines.error, lenient, skipped)
      continue
    last = taken[-1][0]
    spans = f' (the row runs on to line {last}: a quote left open?)' if last > line else ''
    problem = None
    if len(fields) != width:
      problem = f'expected {width} fields, found {len(fields)}{spans}'
    elif last > line and not multiline:
      problem = f'a quoted field holds a line break{spans}'
    if problem is not None:
      handle(InputError(problem, path=path, line=line), lenient, skipped)
      lines.give_back()
      continue
    yield line, {name: value.strip() for name, value in zip(header, fields)}
