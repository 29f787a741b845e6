"""A generic corpus from manifests: utterances and votes tables in CSV, JSONL or Parquet.

utterances (``path``): the columns of perax.data.tables.UTTERANCE_SCHEMA; utt_id is required and unique,
the others are optional (missing or empty strings are null, numbers NaN); extra columns are kept.
A relative audio_path is taken relative to the manifest's directory and must exist; a missing
duration_s is end_s - start_s where both are given, else read from the audio header. corpus defaults
to 'manifest'.

votes (``votes``: one or more files): utt_id, rater and label are required; source (human or
synthetic, default human), weight (in (0, 1], default 1), text (default: the label as written) and
valence / arousal / dominance are optional; extra columns are kept. The label goes through
:func:`perax.data.labels.parse_label` ("Anger" -> angry, unreadable -> invalid), text keeps the original.
Every utt_id must be among the utterances.

Errors name the file and the line (CSV, JSONL) or the row (Parquet, 0-based).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from perax.core.errors import InputError, SkipCounter, handle
from perax.data import labels as labels_lib
from perax.data import tables
from perax.data.corpora import base
from perax.data.corpora.audio_info import audio_duration
from perax.data.corpora.csv_rows import read_csv_rows

NAME = 'manifest'
_FLOAT_FIELDS = frozenset(('start_s', 'end_s', 'duration_s', 'weight', 'valence', 'arousal', 'dominance'))


def _read_rows(
  path: str, required: Sequence[str], lenient: bool, skipped: SkipCounter
) -> Iterator[tuple[dict, dict]]:
  """Yields (location, row) for each row of a CSV, JSONL or Parquet table.

  ``location`` holds the InputError keywords naming the row: ``line`` (CSV, JSONL) or ``item``
  (Parquet). CSV and Parquet must have the ``required`` columns in their header or schema.
  """
  if not os.path.isfile(path):
    raise InputError('no such file', path=path)
  ext = os.path.splitext(path)[1].lower()
  if ext == '.csv':
    for line, row in read_csv_rows(path, required, lenient=lenient, skipped=skipped):
      yield {'line': line}, row
  elif ext in ('.jsonl', '.json'):
    for line, row in tables.iter_jsonl(path, lenient, skipped):
      yield {'line': line}, row
  elif ext in ('.parquet', '.pq'):
    try:
      table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
      raise InputError(f'cannot read Parquet: {e}', path=path) from e
    missing = [name for name in required if name not in table.column_names]
    if missing:
      raise InputError(f'table lacks columns {missing}; has {table.column_names}', path=path)
    for index, row in enumerate(table.to_pylist()):
      yield {'item': f'row {index}'}, row
  else:
    raise InputError(f'unknown table format {ext!r} (expected .csv, .jsonl or .parquet)', path=path)


def _value(row: dict, name: str, path: str, where: dict):
  """A schema field of a row: float (NaN when missing) or string (None when missing or empty)."""
  value = row.get(name)
  if name in _FLOAT_FIELDS:
    if value is None or (isinstance(value, str) and not value.strip()):
      return float('nan')
    try:
      return float(value)
    except (TypeError, ValueError) as e:
      raise InputError(f'{name} {value!r} is not a number', path=path, **where) from e
  if value is None or (isinstance(value, str) and not value.strip()):
    return None
  return str(value).strip()


def _utterance(row: dict, path: str, where: dict) -> dict:
  """One utterance row in the schema, extra columns kept, audio and duration resolved."""
  utterance = dict(row)
  utterance.update({name: _value(row, name, path, where) for name in tables.UTTERANCE_SCHEMA.names})
  if utterance['utt_id'] is None:
    raise InputError('no utt_id', path=path, **where)
  utterance['corpus'] = utterance['corpus'] or NAME
  if utterance['audio_path'] is not None:
    audio_path = os.path.join(os.path.dirname(os.path.abspath(path)), utterance['audio_path'])
    if not os.path.isfile(audio_path):
      raise InputError(f'audio file {audio_path} does not exist', path=path, **where)
    utterance['audio_path'] = audio_path
  if math.isnan(utterance['duration_s']):
    if not (math.isnan(utterance['start_s']) or math.isnan(utterance['end_s'])):
      utterance['duration_s'] = utterance['end_s'] - utterance['start_s']
    elif utterance['audio_path'] is not None and math.isnan(utterance['start_s']):
      utterance['duration_s'] = audio_duration(utterance['audio_path'])
  return utterance


def _vote(row: dict, path: str, where: dict) -> dict:
  """One vote row in the schema, label parsed, extra columns kept."""
  vote = dict(row)
  vote.update({name: _value(row, name, path, where) for name in tables.VOTE_SCHEMA.names})
  missing = [name for name in ('utt_id', 'rater', 'label') if vote[name] is None]
  if missing:
    raise InputError(f'vote lacks {", ".join(missing)}', path=path, **where)
  vote['source'] = vote['source'] or tables.HUMAN
  if vote['source'] not in (tables.HUMAN, tables.SYNTHETIC):
    raise InputError(
      f'source {vote["source"]!r} is neither {tables.HUMAN!r} nor {tables.SYNTHETIC!r}', path=path, **where
    )
  vote['weight'] = 1.0 if math.isnan(vote['weight']) else vote['weight']
  if not 0.0 < vote['weight'] <= 1.0:
    raise InputError(f'weight {vote["weight"]} is outside (0, 1]', path=path, **where)
  vote['text'] = vote['text'] if vote['text'] is not None else vote['label']
  vote['label'] = labels_lib.parse_label(vote['label'])
  return vote


def _read_utterances(path: str, lenient: bool, skipped: SkipCounter) -> list[dict]:
  utterances, seen = [], set()
  for where, row in _read_rows(path, ('utt_id',), lenient, skipped):
    try:
      utterance = _utterance(row, path, where)
      if utterance['utt_id'] in seen:
        raise InputError(f'utt_id {utterance["utt_id"]!r} repeats', path=path, **where)
    except InputError as e:
      handle(e, lenient, skipped)
      continue
    seen.add(utterance['utt_id'])
    utterances.append(utterance)
  return utterances


def _read_votes(path: str, known: set[str], lenient: bool, skipped: SkipCounter) -> list[dict]:
  votes = []
  for where, row in _read_rows(path, ('utt_id', 'rater', 'label'), lenient, skipped):
    try:
      vote = _vote(row, path, where)
      if vote['utt_id'] not in known:
        raise InputError(
          f'vote for utt_id {vote["utt_id"]!r}, absent from the utterances', path=path, **where
        )
    except InputError as e:
      handle(e, lenient, skipped)
      continue
    votes.append(vote)
  return votes


def load(
  path: os.PathLike | str,
  *,
  lenient: bool = False,
  votes: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
) -> base.Corpus:
  """Loads a corpus from an utterances manifest and optional votes tables (see module docstring).

  Args:
    path: the utterances table (.csv, .jsonl or .parquet).
    lenient: skip and count malformed rows and votes for unknown utterances.
    votes: votes table(s): a path, a comma-separated string of paths, or a list; None for a corpus
      without votes (e.g. audio to be annotated by synthetic raters only).

  Raises:
    InputError: malformed input, naming file and line or row.
  """
  path = os.fspath(path)
  if isinstance(votes, (str, os.PathLike)):
    votes = [p for p in os.fspath(votes).split(',') if p]
  skipped = SkipCounter()
  utterances = _read_utterances(path, lenient, skipped)
  if not utterances:
    raise InputError('no utterances', path=path)
  known = {u['utt_id'] for u in utterances}
  vote_rows = [
    v for votes_path in votes or () for v in _read_votes(os.fspath(votes_path), known, lenient, skipped)
  ]
  return base.Corpus(
    NAME,
    tables.utterances_table(utterances),
    tables.votes_table(vote_rows) if vote_rows else tables.empty_votes(),
    skipped,
  )
