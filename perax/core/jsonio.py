"""JSON that perax writes: strict (no NaN), atomic, and readable back with a clear error.

``jsonable`` is the one conversion of values for JSON: NaN and infinities become None (JSON null),
numpy scalars and arrays become Python numbers and lists, tuples become lists, mapping keys strings.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from perax.core import atomic
from perax.core.errors import InputError


def jsonable(value: Any) -> Any:
  """``value`` with NaN/inf -> None, numpy -> Python, tuples -> lists, recursively."""
  if isinstance(value, Mapping):
    return {str(k): jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [jsonable(v) for v in value]
  if isinstance(value, np.ndarray):
    return jsonable(value.tolist())
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def dumps(value: Any) -> str:
  """Strict, indented JSON text of ``jsonable(value)``, ending in a newline."""
  return json.dumps(jsonable(value), indent=2, sort_keys=False, allow_nan=False) + '\n'


def write_json(path: os.PathLike | str, value: Any) -> str:
  """Writes ``value`` as strict JSON, atomically; returns the path."""
  return atomic.write_text(path, dumps(value))


def read_json(path: os.PathLike | str) -> Any:
  """Reads a JSON file; a file that is not UTF-8 JSON raises InputError naming it and the line."""
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except json.JSONDecodeError as error:
    raise InputError(f'not valid JSON: {error.msg}', path=path, line=error.lineno) from None
  except UnicodeDecodeError as error:
    raise InputError(f'not UTF-8 (byte {error.start})', path=path) from None
