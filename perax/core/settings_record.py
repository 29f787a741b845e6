"""Record the settings a job ran with; refuse a rerun into the same place with other settings.

Jobs that resume from what they find on disk (proxy shards, pipeline stages) must not mix the outputs
of two different runs. The first run writes its settings; a later run must bring the same ones, or
gets an InputError naming every setting that differs, with both values.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from perax.core import jsonio
from perax.core.errors import InputError


def differing(recorded: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
  """Sorted keys whose values differ between two settings records (missing counts as differing)."""
  return sorted(k for k in set(recorded) | set(wanted) if recorded.get(k) != wanted.get(k))


def claim(path: os.PathLike | str, settings: Mapping[str, Any], advice: str) -> None:
  """Writes ``settings`` to ``path``, or checks that the record already there is the same.

  Args:
    path: the JSON record's path.
    settings: the settings (made JSON-ready with ``jsonio.jsonable``, so tuples equal lists).
    advice: what the user can do instead, appended to the error (e.g. 'use a new --out_dir').

  Raises:
    InputError: the record holds other settings; the message names each and both values.
  """
  wanted = jsonio.jsonable(dict(settings))
  if os.path.exists(path):
    recorded = jsonio.read_json(path)
    keys = differing(recorded, wanted)
    if keys:
      shown = '; '.join(f'{k}: recorded {recorded.get(k)!r}, now {wanted.get(k)!r}' for k in keys)
      raise InputError(f'settings differ from the recorded run ({shown}); {advice}', path=path)
    return
  jsonio.write_json(path, wanted)
