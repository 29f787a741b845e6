"""Atomic file writes: a killed job leaves the old file or the new one, never half of one."""

from __future__ import annotations

import os


def write_text(path: os.PathLike | str, text: str) -> str:
  """Writes ``text`` (UTF-8) to ``path`` through a temporary file and a rename; returns the path.

  The parent directory is created when missing.
  """
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'w', encoding='utf-8') as f:
    f.write(text)
  os.replace(tmp, path)
  return path
