"""The perax-converted checkpoint directory: streamed writing, checked restoring into target shardings.

A converted directory holds:

- ``state/``: an Orbax checkpoint (``orbax.checkpoint.v1``) of a nested dict of arrays keyed by
  perax parameter path (``{'language_model': {'layers': {'mlp': ...}}}``; a tower's layers are
  stacked, so ``language_model.layers.mlp.up_proj.kernel`` is ``[layers, hidden, intermediate]``);
- ``config.json``, the tokenizer and processor files (written by perax.models.convert);
- ``perax.json``: format, format version, parameter dtype, perax version, source directory. It is
  written last: a directory without it is an unfinished conversion.

Writing streams: :func:`write` takes the arrays one at a time and saves them in groups of at most
``chunk_bytes`` with Orbax's partial saves, so the writer holds one group (plus Orbax's copy of it),
never the whole model. Everything is written under ``<out_dir>/.partial`` and moved into place at the
end, while a :class:`perax.core.locks.RunLock` on ``out_dir`` keeps other processes out.

Restoring (:func:`restore`) reads straight into the requested dtype and shardings (abstract arrays
carrying NamedShardings), so a large model never sits whole on one device.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import numpy as np
from orbax.checkpoint import v1 as ocp

from perax.core.errors import InputError
from perax.core.locks import LOCK_FILE, RunLock
from perax.core.progress import Progress

FORMAT = 'perax-qwen2-audio'
# 1: one StandardCheckpointer save of the whole state; 2: partial saves, one array per layer; 3: each
# tower's layers stacked into one array per parameter (perax.models.layer_stack). Only the current
# version is read: convert the HF checkpoint again.
FORMAT_VERSION = 3
STATE_DIR = 'state'
PERAX_JSON = 'perax.json'
STAGING_DIR = '.partial'
# Group size bounds: a tenth of the output, at least 16 MiB and at most 256 MiB per partial save.
MIN_CHUNK_BYTES = 16 << 20
MAX_CHUNK_BYTES = 256 << 20


def default_chunk_bytes(total_bytes: int) -> int:
  """Bytes per partial save: ``total / 10`` clipped to [16 MiB, 256 MiB], so the writer's memory
  stays a small share of the output at any model size (7B bf16: 256 MiB groups of a 16.8 GB output)."""
  return int(min(MAX_CHUNK_BYTES, max(MIN_CHUNK_BYTES, total_bytes // 10)))


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
  """{'a.b.0.c': x} -> {'a': {'b': {'0': {'c': x}}}} (Orbax's tree of string keys)."""
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split('.')
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


def flatten(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  """Inverse of :func:`nest`."""
  flat = {}
  for key, value in tree.items():
    path = f'{prefix}{key}'
    if isinstance(value, Mapping):
      flat.update(flatten(value, path + '.'))
    else:
      flat[path] = value
  return flat


def is_converted(path: os.PathLike | str) -> bool:
  """Whether ``path`` is a finished converted directory (it has perax.json)."""
  return (pathlib.Path(path) / PERAX_JSON).is_file()


def check_not_unfinished(path: os.PathLike | str) -> None:
  """Refuses a directory holding a converted state but no perax.json (a conversion that stopped)."""
  path = pathlib.Path(path)
  if not is_converted(path) and ((path / STATE_DIR).exists() or (path / STAGING_DIR).exists()):
    raise InputError(
      f'an unfinished conversion ({STATE_DIR}/ or {STAGING_DIR}/ but no {PERAX_JSON}); '
      'convert again with --overwrite',
      path=path,
    )


def read_info(path: os.PathLike | str) -> dict[str, Any]:
  """perax.json of a converted directory, checked for format and version."""
  file = pathlib.Path(path) / PERAX_JSON
  try:
    info = json.loads(file.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
    raise InputError(f'unreadable {PERAX_JSON} ({error})', path=file) from None
  if not isinstance(info, dict) or info.get('format') != FORMAT:
    raise InputError(f'not a {FORMAT} directory (format {info.get("format")!r})', path=file)
  if info.get('format_version') != FORMAT_VERSION:
    raise InputError(
      f'format_version {info.get("format_version")!r}, but this perax reads version {FORMAT_VERSION}; '
      'convert the HF checkpoint again',
      path=file,
    )
  return info


def write(
  out_dir: os.PathLike | str,
  arrays: Iterable[tuple[str, np.ndarray]],
  *,
  total_bytes: int,
  write_files: Callable[[pathlib.Path], None],
  info: Mapping[str, Any],
  overwrite: bool = False,
  chunk_bytes: int | None = None,
  progress: Progress | None = None,
) -> pathlib.Path:
  """Writes a converted directory, streaming ``arrays``.

  Args:
    out_dir: the directory to write. Missing or empty (a stale lock file or staging folder of a dead
      conversion aside), or, with ``overwrite``, replaced once the new contents are complete.
    arrays: (perax path, numpy array) pairs, consumed one at a time; each is dropped once saved.
    total_bytes: their total size, for the default group size.
    write_files: writes config.json and the processor files into the folder it is given.
    info: perax.json's contents besides format and version.
    overwrite: replace a non-empty ``out_dir``.
    chunk_bytes: bytes per partial save; default :func:`default_chunk_bytes`.
    progress: advanced once per array.

  Returns:
    ``out_dir``, absolute.

  Raises:
    InputError: ``out_dir`` is not empty (without ``overwrite``), is a file, or is locked by another
      process. On any error the directory is left as it was (a directory this call created is removed).
  """
  out_dir = pathlib.Path(out_dir).absolute()  # Orbax takes absolute paths only
  if out_dir.exists() and not out_dir.is_dir():
    raise InputError('the output path exists and is not a directory', path=out_dir)
  created = not out_dir.exists()
  lock = RunLock(out_dir, what='conversion output directory').acquire()
  staging = out_dir / STAGING_DIR
  try:
    existing = sorted(p.name for p in out_dir.iterdir() if p.name not in (LOCK_FILE, STAGING_DIR))
    if existing and not overwrite:
      shown = ', '.join(existing[:5]) + (f' and {len(existing) - 5} more' if len(existing) > 5 else '')
      raise InputError(
        f'the output directory exists and is not empty ({shown}); choose another --out_dir '
        'or pass --overwrite to replace it',
        path=out_dir,
      )
    shutil.rmtree(staging, ignore_errors=True)  # a dead conversion's leftovers; the lock is ours
    staging.mkdir()
    _save_streaming(staging / STATE_DIR, arrays, chunk_bytes or default_chunk_bytes(total_bytes), progress)
    write_files(staging)
    _write_json(staging / PERAX_JSON, {'format': FORMAT, 'format_version': FORMAT_VERSION, **info})
    for name in existing:
      _remove(out_dir / name)
    for entry in sorted(staging.iterdir(), key=lambda p: p.name == PERAX_JSON):  # perax.json last
      os.replace(entry, out_dir / entry.name)
    staging.rmdir()
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    if created:
      _remove_lock_and_directory(lock, out_dir)
    else:
      lock.release()
    raise
  lock.release()
  return out_dir


def _save_streaming(
  state_dir: pathlib.Path,
  arrays: Iterable[tuple[str, np.ndarray]],
  chunk_bytes: int,
  progress: Progress | None,
) -> None:
  """Orbax partial saves of groups of at most ``chunk_bytes`` (one bigger array is a group alone)."""
  group: dict[str, np.ndarray] = {}
  size = 0
  for path, array in arrays:
    if group and size + array.nbytes > chunk_bytes:
      ocp.partial.save(state_dir, nest(group))
      group, size = {}, 0
    group[path] = array
    size += array.nbytes
    del array
    if progress:
      progress.update()
  if group:
    ocp.partial.save(state_dir, nest(group))
  del group
  ocp.partial.finalize(state_dir)


def _remove(path: pathlib.Path) -> None:
  if path.is_dir() and not path.is_symlink():
    shutil.rmtree(path)
  else:
    path.unlink()


def _remove_lock_and_directory(lock: RunLock, directory: pathlib.Path) -> None:
  """Removes a directory this process created for its output, lock file included, then unlocks."""
  try:
    (directory / LOCK_FILE).unlink(missing_ok=True)
    directory.rmdir()
  except OSError:
    pass  # something else appeared in it: leave it
  finally:
    lock.release()


def _write_json(path: pathlib.Path, value: Mapping[str, Any]) -> None:
  path.write_text(json.dumps(dict(value), indent=2) + '\n')


def stored_arrays(path: os.PathLike | str) -> dict[str, Any]:
  """perax path -> stored metadata (``.shape``, ``.dtype``) of a converted directory's state.

  Raises:
    InputError: perax.json or the state is missing or unreadable (one line naming the directory).
  """
  read_info(path)
  state_dir = pathlib.Path(path).absolute() / STATE_DIR
  if not state_dir.is_dir():
    raise InputError(f'no {STATE_DIR}/ folder: not a complete converted checkpoint', path=path)
  with corrupt_as_input_error(state_dir):
    return flatten(ocp.metadata(state_dir).metadata)


def restore(path: os.PathLike | str, target: Mapping[str, jax.ShapeDtypeStruct]) -> dict[str, jax.Array]:
  """Reads a converted directory's arrays straight into ``target``'s dtypes and shardings.

  Args:
    path: the converted directory.
    target: perax path -> ShapeDtypeStruct with a ``sharding``; its shapes must equal the stored ones
      (check with :func:`stored_arrays` first for a clear message).

  Raises:
    InputError: the Orbax state is corrupt or unreadable, named by its directory in one line.
  """
  state_dir = pathlib.Path(path).absolute() / STATE_DIR
  with corrupt_as_input_error(state_dir):
    return flatten(ocp.load(state_dir, nest(target)))


@contextlib.contextmanager
def corrupt_as_input_error(state_dir: pathlib.Path):
  """Turns any failure inside Orbax or tensorstore into one InputError line naming ``state_dir``."""
  try:
    yield
  except (InputError, KeyboardInterrupt, SystemExit, MemoryError):
    raise
  except Exception as error:  # Orbax and tensorstore raise many kinds
    first_line = (str(error).strip().splitlines() or [''])[0][:300]
    raise InputError(
      f'corrupt or unreadable converted checkpoint ({type(error).__name__}: {first_line}); convert it again',
      path=state_dir,
    ) from None
