"""Reading a text file line by line, so that an undecodable byte is reported at its own line.

A text-mode file decodes in chunks of several kilobytes, so a bad byte raises its UnicodeDecodeError
while the reader is still many lines before it (a byte on line 200 reported at line 170), or before
the first line is even returned. :func:`decoded_lines` reads bytes and decodes each physical line by
itself instead: the error names the exact line and column, and the caller decides whether to stop
(strict) or to skip and count that line (lenient).

Line endings are ``\\n``, ``\\r\\n`` or a bare ``\\r`` (as Python's universal newlines), and each line
is returned with its ending, as ``open(..., newline='')`` would, so :mod:`csv` can read the lines. A
UTF-8 byte-order mark at the start of the file is dropped for the UTF-8 encodings, in every format.
"""

from __future__ import annotations

import codecs
import os
from collections.abc import Iterator

from perax.core.errors import InputError

_UTF8 = ('utf-8', 'utf8', 'utf-8-sig', 'utf_8', 'utf_8_sig')
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def _codec(encoding: str) -> str:
  """The codec decoding one line: utf-8-sig becomes utf-8 (the mark is handled once, at the start)."""
  return 'utf-8' if encoding.lower() in _UTF8 else encoding


def decoded_lines(
  path: os.PathLike | str, encoding: str = 'utf-8'
) -> Iterator[tuple[int, str, InputError | None]]:
  """Yields ``(line, text, error)`` for each physical line of a file, in order.

  Args:
    path: the file.
    encoding: its text encoding ('utf-8' and 'utf-8-sig' both accept and drop a leading BOM).

  Yields:
    line: 1-based line number.
    text: the decoded line with its ending; where the line cannot be decoded, the line decoded
      with U+FFFD replacement characters (so a lenient reader can still step over it).
    error: None, or an InputError naming the file, the line and the first bad byte.

  Raises:
    InputError: the file is missing or unreadable, or is UTF-16 text where UTF-8 is expected.
  """
  path = os.fspath(path)
  codec = _codec(encoding)
  strip_bom = codec == 'utf-8'
  try:
    with open(path, 'rb') as f:
      for number, raw in enumerate(_physical_lines(f), 1):
        if number == 1 and strip_bom:
          if raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
          elif raw.startswith(_UTF16_BOMS):
            raise InputError('UTF-16 text; expected UTF-8 (save the file as UTF-8)', path=path, line=1)
        try:
          yield number, raw.decode(codec), None
        except UnicodeDecodeError as e:
          error = InputError(
            f'not {encoding} text: byte 0x{raw[e.start]:02x} at column {e.start + 1} ({e.reason})',
            path=path,
            line=number,
          )
          yield number, raw.decode(codec, errors='replace'), error
  except FileNotFoundError:
    raise InputError('no such file', path=path) from None
  except OSError as e:
    raise InputError(f'cannot read: {e.strerror or e}', path=path) from e


def _physical_lines(f) -> Iterator[bytes]:
  """The lines of a binary file, split at \\n, \\r\\n and bare \\r, endings kept."""
  for chunk in f:  # split at b'\n' only
    if b'\r' in chunk:
      yield from chunk.splitlines(keepends=True)
    else:
      yield chunk
