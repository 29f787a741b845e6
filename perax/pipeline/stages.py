"""Stages keyed by their inputs: each stage records what it used, and reruns only when that changed.

A stage is a name, a *key* and a body. The key holds every setting the stage reads and the digests of
the upstream results it consumes; the body returns the stage's outputs (a JSON-ready dict of paths
and figures). :meth:`Stages.run`:

- finds ``<root>/stages/<name>.json`` with the same key and every output file present: reuses it;
- otherwise runs the body, after clearing the stage's directories when they may hold outputs of other
  settings (a completed record with another key, or ``<name>.started.json`` left by a killed run with
  another key). A killed run resumed with the *same* key keeps them, so bodies that resume from their
  own files (proxy shards, training checkpoints) pick up where they stopped;
- records ``{'key', 'outputs', 'digest', 'seconds'}`` atomically once the body returns. Paths under
  the run directory are recorded as ``<out_dir>/...``, so a run directory can be moved or copied.

The digest is a SHA-256 over the outputs and the bytes of every regular file they name (directories by
path only, so a 16 GB checkpoint is not read). Downstream keys include it, so a stage rerun with
changed settings reaches exactly the stages whose inputs changed: a rerun that produces the same files
leaves its downstream stages alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax

from perax.core import jsonio, log, rendezvous, settings_record
from perax.core.errors import InputError

STAGE_DIR = 'stages'
BASE = '<out_dir>'  # how records write the run directory in paths under it


def _strings(value: Any) -> Iterator[str]:
  if isinstance(value, str):
    yield value
  elif isinstance(value, Mapping):
    for v in value.values():
      yield from _strings(v)
  elif isinstance(value, (list, tuple)):
    for v in value:
      yield from _strings(v)


def _map_strings(value: Any, function: Callable[[str], str]) -> Any:
  if isinstance(value, str):
    return function(value)
  if isinstance(value, Mapping):
    return {k: _map_strings(v, function) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_map_strings(v, function) for v in value]
  return value


def to_record(outputs: Mapping[str, Any], base: str) -> dict:
  """``outputs`` with the paths under ``base`` written as ``<out_dir>/...``: records (and digests)
  that do not depend on where the run directory is, so it can be moved or copied."""
  root = os.path.abspath(base)

  def shorten(s: str) -> str:
    if os.sep not in s:
      return s
    full = os.path.abspath(s)
    return BASE + full[len(root) :] if full == root or full.startswith(root + os.sep) else s

  return _map_strings(outputs, shorten)


def from_record(outputs: Mapping[str, Any], base: str) -> dict:
  """The inverse of :func:`to_record`: ``<out_dir>/...`` paths joined onto ``base``."""
  return _map_strings(
    outputs, lambda s: base + s[len(BASE) :] if s == BASE or s.startswith(BASE + '/') else s
  )


def file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def digest(record: Mapping[str, Any], base: str) -> str:
  """SHA-256 of an outputs record (paths as in :func:`to_record`) and of the bytes of every file it
  names: the same for the same results wherever the run directory is."""
  h = hashlib.sha256(jsonio.dumps(record).encode())
  for path in sorted(set(_strings(record))):
    full = from_record({'p': path}, base)['p']
    if os.path.isfile(full):
      h.update(f'\0{path}\0{file_sha256(full)}'.encode())
  return h.hexdigest()


def _missing(outputs: Mapping[str, Any]) -> list[str]:
  """Paths the outputs name that look like files (have an extension) but are gone."""
  gone = []
  for s in _strings(outputs):
    if (os.path.isabs(s) or os.sep in s) and os.path.splitext(s)[1] and not os.path.exists(s):
      gone.append(s)
  return gone


@dataclasses.dataclass(frozen=True)
class Record:
  """A finished stage: its key, its outputs, their digest, and how long the body ran."""

  name: str
  key: dict
  outputs: dict
  digest: str
  seconds: float
  reused: bool


class Stages:
  """Runs the stages of one run directory (``root``), keyed by their inputs."""

  def __init__(self, root: str, label: str = '', base: str | None = None):
    """``label`` tells apart the stages of several run directories in messages ('Session1'); ``base``
    is the run directory that record paths are relative to (default ``root``)."""
    self.root = root
    self.base = root if base is None else base
    self.label = label
    self.records: dict[str, Record] = {}

  def shown(self, name: str) -> str:
    """How messages and errors name stage ``name``: 'train' or 'train Session1'."""
    return f'{name} {self.label}' if self.label else name

  def _path(self, name: str, suffix: str = '') -> str:
    return os.path.join(self.root, STAGE_DIR, f'{name}{suffix}.json')

  def run(
    self,
    name: str,
    key: Mapping[str, Any],
    body: Callable[[], Mapping[str, Any]],
    clears: Sequence[str] = (),
    *,
    everywhere: bool = False,
  ) -> Record:
    """Runs stage ``name`` unless a record with the same ``key`` is there; returns its record.

    Args:
      name: the stage's name (its record is ``stages/<name>.json`` under the root).
      key: the settings and upstream digests the stage uses (JSON-ready after jsonio.jsonable).
      body: computes the outputs (paths and values); called only when the stage must run.
      clears: the directories the stage writes; removed before a run whose key differs from the one
        their contents were made with.
      everywhere: with several processes (perax.core.distributed), run ``body`` in every process
        (a stage whose work is shared out: proxies, training, evaluation); otherwise process 0 runs
        it alone while the others wait. Process 0 decides whether to reuse, clears and records;
        every process returns process 0's record (the run directory must be on a filesystem every
        process sees). Errors in any process are raised in all (perax.core.rendezvous).
    """
    key = jsonio.jsonable(dict(key))
    shown = self.shown(name)
    if jax.process_count() == 1:
      return self._reused(name, key, clears) or self._finish(name, key, *self._outputs(shown, body))
    leader = jax.process_index() == 0
    found = rendezvous.run_everywhere(
      f'stage {shown} prepared', lambda: self._reused(name, key, clears) if leader else None
    )
    if found is not None:
      return found
    if not leader and os.path.exists(self._path(name)):  # process 0 found it reusable
      return self._load(name, key, reused=True)
    results = rendezvous.run_everywhere(
      f'stage {shown}', lambda: self._outputs(shown, body) if leader or everywhere else None
    )
    rendezvous.run_everywhere(
      f'stage {shown} recorded', lambda: self._finish(name, key, *results) if leader else None
    )
    return self.records[name] if leader else self._load(name, key, reused=False)

  def _reused(self, name: str, key: dict, clears: Sequence[str]) -> Record | None:
    """The stage's record when it can be reused; otherwise None, after clearing outputs made with
    other settings and marking the stage as started."""
    shown = self.shown(name)
    marker, started = self._path(name), self._path(name, '.started')
    stale = None
    if os.path.exists(marker):
      record = jsonio.read_json(marker)
      outputs = from_record(record['outputs'], self.base)
      gone = _missing(outputs)
      if record['key'] == key and not gone:
        log.info(f'done earlier ({record["seconds"]:.1f} s), reusing its outputs', stage=shown)
        result = Record(name, key, outputs, record['digest'], record['seconds'], True)
        self.records[name] = result
        return result
      if gone:
        log.warning(f'outputs removed since it ran ({gone[0]}): running it again', stage=shown)
      else:
        stale = record['key']
      os.remove(marker)
    if os.path.exists(started):
      begun = jsonio.read_json(started)
      if begun != key:
        stale = begun
      else:
        log.info('resuming a run that was interrupted', stage=shown)
    if stale is not None:
      changed = settings_record.differing(stale, key)
      what = '; '.join(f'{k}: recorded {stale.get(k)!r}, now {key.get(k)!r}' for k in changed)
      log.warning(f'inputs changed ({what}): running it again, replacing its outputs', stage=shown)
      for directory in clears:
        shutil.rmtree(directory, ignore_errors=True)
    jsonio.write_json(started, key)
    return None

  def _outputs(self, shown: str, body: Callable[[], Mapping[str, Any]]) -> tuple[dict, float]:
    """(the body's outputs, JSON-ready; seconds it took); bad input names the stage."""
    log.info('running', stage=shown)
    begun_at = time.time()
    try:
      outputs = jsonio.jsonable(dict(body()))
    except InputError as error:  # the user's to fix: say which stage met it
      raise InputError(f'[{shown}] {error}') from error
    except FileNotFoundError as error:
      raise InputError(f'[{shown}] {error}') from error
    return outputs, time.time() - begun_at

  def _finish(self, name: str, key: dict, outputs: dict, seconds: float) -> Record:
    """Records a finished stage atomically and forgets that it was started."""
    saved = to_record(outputs, self.base)
    record = {'key': key, 'outputs': saved, 'digest': digest(saved, self.base), 'seconds': seconds}
    jsonio.write_json(self._path(name), record)
    os.remove(self._path(name, '.started'))
    log.info(f'finished in {seconds:.1f} s', stage=self.shown(name))
    result = Record(name, key, outputs, record['digest'], seconds, False)
    self.records[name] = result
    return result

  def _load(self, name: str, key: dict, reused: bool) -> Record:
    """The record process 0 wrote (processes other than 0 of a multi-process run)."""
    record = jsonio.read_json(self._path(name))
    result = Record(
      name, key, from_record(record['outputs'], self.base), record['digest'], record['seconds'], reused
    )
    self.records[name] = result
    return result
