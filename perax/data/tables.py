"""The two tables every corpus becomes, and how they are read and written.

perax keeps data as :class:`pyarrow.Table` in memory and Parquet on disk; compute converts columns to
numpy.  Every corpus loader produces exactly these schemas (extra columns are allowed after them).

utterances (one row per utterance):
  utt_id      string   the corpus's own name (IEMOCAP turn id, MSP-Podcast file name, CREMA-D clip
                       name such as 1001_IEO_NEU_XX, EmoDB file stem). Unique.
  audio_path  string   absolute path of the audio file; null where the corpus ships no audio.
  start_s     float64  segment start within audio_path in seconds; NaN = the whole file.
  end_s       float64  segment end in seconds; NaN = the whole file.
  duration_s  float64  utterance duration in seconds; NaN where unknown.
  transcript  string   null where the corpus has none.
  speaker     string
  split       string   train | dev | test, or a corpus's extra test set test1 | test2 | test3
                       (KNOWN_SPLITS; null where the corpus has no split). Nothing else.
  fold        string   cross-validation fold (IEMOCAP: Session1..Session5); null where none.
  corpus      string

votes (one row per rater and label; a rater who gives several labels on one line gets one row per
label, with weights summing to 1):
  utt_id      string
  rater       string   human rater id, or for synthetic votes "<model>|<prompt_id>"
  source      string   human | synthetic
  label       string   canonical label (perax.data.labels), or "invalid" (see ``text``)
  weight      float64  share of this rater's vote; 1.0 for single-label votes
  text        string   the original answer text as the corpus or the model wrote it
  valence, arousal, dominance  float64  dimensional ratings where the corpus has them, else NaN

Synthetic votes written by generate_proxies also carry prompt_id (string), vote_index (int32) and
valid (bool).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from perax.core.errors import InputError
from perax.data.jsonl_rows import drop_unconvertible, iter_jsonl
from perax.data.text_lines import decoded_lines

HUMAN = 'human'
SYNTHETIC = 'synthetic'

UTTERANCE_SCHEMA = pa.schema(
  [
    ('utt_id', pa.string()),
    ('audio_path', pa.string()),
    ('start_s', pa.float64()),
    ('end_s', pa.float64()),
    ('duration_s', pa.float64()),
    ('transcript', pa.string()),
    ('speaker', pa.string()),
    ('split', pa.string()),
    ('fold', pa.string()),
    ('corpus', pa.string()),
  ]
)

VOTE_SCHEMA = pa.schema(
  [
    ('utt_id', pa.string()),
    ('rater', pa.string()),
    ('source', pa.string()),
    ('label', pa.string()),
    ('weight', pa.float64()),
    ('text', pa.string()),
    ('valence', pa.float64()),
    ('arousal', pa.float64()),
    ('dominance', pa.float64()),
  ]
)

_DEFAULTS = {pa.float64(): float('nan'), pa.string(): None}

# The split names perax knows: its own three, and the extra test sets of corpora that ship several
# (MSP-Podcast's Test1, Test2, Test3). A name outside these is a typo, never a new split.
STANDARD_SPLITS = ('train', 'dev', 'test')
CORPUS_SPLITS = ('test1', 'test2', 'test3')
KNOWN_SPLITS = STANDARD_SPLITS + CORPUS_SPLITS
# Other spellings of a known split, as corpora write them (lower-cased): MSP-Podcast's Development.
SPLIT_ALIASES = {'development': 'dev', 'validation': 'dev', 'valid': 'dev', 'val': 'dev'}


def canonical_split(name: str, path: os.PathLike | str | None = None, **where) -> str:
  """perax's name of the split a corpus or manifest calls ``name`` (Train -> train, Development -> dev).

  Case is ignored and :data:`SPLIT_ALIASES` resolved; anything else must be one of :data:`KNOWN_SPLITS`.

  Raises:
    InputError: an unknown name (naming ``path`` and ``where``: line=... or item=...), with the
      closest known name when there is one ('tain' -> did you mean 'train'?).
  """
  folded = str(name).strip().lower()
  folded = SPLIT_ALIASES.get(folded, folded)
  if folded in KNOWN_SPLITS:
    return folded
  raise InputError(_unknown_split(name), path=path, **where)


def _unknown_split(name: str) -> str:
  choices = list(KNOWN_SPLITS) + list(SPLIT_ALIASES)
  close = difflib.get_close_matches(str(name).strip().lower(), choices, n=1, cutoff=0.6)
  hint = f'; did you mean {SPLIT_ALIASES.get(close[0], close[0])!r}?' if close else ''
  return f'unknown split {name!r} (known: {", ".join(KNOWN_SPLITS)}){hint}'


def _build(rows_or_columns, schema: pa.Schema, what: str) -> pa.Table:
  """Builds a table in ``schema`` from a list of row dicts or a dict of columns.

  Missing columns of the schema are filled with their default (NaN or null); extra columns are kept
  after the schema's columns.
  """
  if isinstance(rows_or_columns, pa.Table):
    columns = {name: rows_or_columns.column(name) for name in rows_or_columns.column_names}
    n = rows_or_columns.num_rows
  elif isinstance(rows_or_columns, Mapping):
    columns = dict(rows_or_columns)
    n = len(next(iter(columns.values()))) if columns else 0
  else:
    rows = list(rows_or_columns)
    n = len(rows)
    keys = list(schema.names) + sorted({k for r in rows for k in r} - set(schema.names))
    columns = {
      k: [r.get(k, _DEFAULTS.get(schema.field(k).type) if k in schema.names else None) for r in rows]
      for k in keys
    }
  arrays, fields = [], []
  for field in schema:
    if field.name in columns:
      col = columns[field.name]
      try:
        arr = (
          pa.array(col, type=field.type)
          if not isinstance(col, (pa.Array, pa.ChunkedArray))
          else col.cast(field.type)
        )
      except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as e:
        raise InputError(f'{what} column {field.name!r} is not {field.type}: {e}') from e
    else:
      default = _DEFAULTS.get(field.type)
      arr = pa.array([default] * n, type=field.type)
    arrays.append(arr)
    fields.append(field)
  for name, col in columns.items():
    if name not in schema.names:
      arr = col if isinstance(col, (pa.Array, pa.ChunkedArray)) else pa.array(col)
      arrays.append(arr)
      fields.append(pa.field(name, arr.type))
  return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _length(columns: Mapping) -> int:
  return len(next(iter(columns.values()))) if columns else 0


def utterances_table(rows_or_columns) -> pa.Table:
  """Utterances in UTTERANCE_SCHEMA, from row dicts, a column dict or a table.

  Checks: utt_id present and unique; split null or one of :data:`KNOWN_SPLITS` exactly (loaders
  map their corpus's names with :func:`canonical_split`).
  """
  table = _build(rows_or_columns, UTTERANCE_SCHEMA, 'utterances')
  ids = table.column('utt_id')
  if ids.null_count:
    raise InputError('utterances have a null utt_id')
  splits = table.column('split')
  unknown = pc.invert(pc.is_in(splits, value_set=pa.array(KNOWN_SPLITS))).to_numpy(zero_copy_only=False)
  unknown &= ~pc.is_null(splits).to_numpy(zero_copy_only=False)
  if unknown.any():
    first = int(np.flatnonzero(unknown)[0])
    raise InputError(_unknown_split(splits[first].as_py()), item=ids[first].as_py())
  if pc.count_distinct(ids).as_py() != table.num_rows:
    values, counts = np.unique(np.asarray(ids.to_pylist(), dtype=object), return_counts=True)
    raise InputError(f'utterances repeat utt_id {values[counts > 1][0]!r}', item=str(values[counts > 1][0]))
  return table


def votes_table(rows_or_columns) -> pa.Table:
  """Votes in VOTE_SCHEMA: ``source`` must be human|synthetic, ``weight`` a number, not NaN.

  A missing weight (no column, a missing key, null) is 1.0, a whole vote; a NaN weight is refused
  (an InputError naming the first such vote's utt_id), as it says nothing about the vote's share.
  Range checks belong to the readers (the manifest wants (0, 1]) and to vote counting.
  """
  if not isinstance(rows_or_columns, (pa.Table, Mapping)):
    rows_or_columns = [dict(r) for r in rows_or_columns]
    for r in rows_or_columns:
      r.setdefault('weight', 1.0)
  elif isinstance(rows_or_columns, Mapping) and 'weight' not in rows_or_columns:
    rows_or_columns = {**rows_or_columns, 'weight': np.ones(_length(rows_or_columns))}
  elif isinstance(rows_or_columns, pa.Table) and 'weight' not in rows_or_columns.column_names:
    rows_or_columns = rows_or_columns.append_column('weight', pa.array(np.ones(rows_or_columns.num_rows)))
  table = _build(rows_or_columns, VOTE_SCHEMA, 'votes')
  weight = table.column('weight')
  if weight.null_count:  # a missing weight is a whole vote; a NaN one is an error
    table = table.set_column(
      table.schema.get_field_index('weight'), 'weight', pc.fill_null(weight, pa.scalar(1.0))
    )
  weight = table.column('weight').to_numpy(zero_copy_only=False)
  bad = np.flatnonzero(np.isnan(weight))
  if bad.size:
    raise InputError(
      f'vote weight nan ({bad.size} such votes): a missing weight is left empty (a whole vote), never NaN',
      item=str(table.column('utt_id')[int(bad[0])].as_py()),
    )
  sources = set(table.column('source').unique().to_pylist())
  if not sources <= {HUMAN, SYNTHETIC}:
    raise InputError(
      f'votes have source {sorted(map(str, sources - {HUMAN, SYNTHETIC}))}; '
      f'expected {HUMAN!r} or {SYNTHETIC!r}'
    )
  return table


def empty_votes() -> pa.Table:
  return VOTE_SCHEMA.empty_table()


def concat(tables: Sequence[pa.Table]) -> pa.Table:
  """Concatenates tables of one schema family, unifying extra columns (missing ones become null)."""
  return pa.concat_tables(list(tables), promote_options='default')


def label_columns(labels: Iterable[str]) -> list[str]:
  """The distribution columns for a label set, in order: ``p_<label>``."""
  return [f'p_{label}' for label in labels]


def labels_from_columns(column_names: Iterable[str]) -> list[str]:
  """Inverse of :func:`label_columns`: the labels of a table's ``p_<label>`` columns, in order."""
  return [c[2:] for c in column_names if c.startswith('p_')]


# ----------------------------------------------------------------------------------------------
# Files.


def write_table(table: pa.Table, path: os.PathLike | str) -> str:
  """Writes ``table`` to Parquet atomically (temp file + rename), so a killed job leaves no half file."""
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f'{path}.tmp-{os.getpid()}'
  pq.write_table(table, tmp)
  os.replace(tmp, path)
  return path


def read_table(path: os.PathLike | str, columns: Sequence[str] | None = None) -> pa.Table:
  """Reads a Parquet, CSV or JSONL table by its extension, naming the file (and line) on failure.

  CSV and JSONL are UTF-8, with or without a byte-order mark; in CSV only an empty field is null.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise InputError('no such file', path=path)
  ext = os.path.splitext(path)[1].lower()
  try:
    if ext in ('.parquet', '.pq'):
      return pq.read_table(path, columns=columns)
    if ext == '.csv':
      _check_text(path)
      # Only an empty field is missing: 'nan' stays a NaN number and 'NA' a string, never null.
      table = pa_csv.read_csv(
        path, convert_options=pa_csv.ConvertOptions(null_values=[''], strings_can_be_null=True)
      )
    elif ext in ('.jsonl', '.json'):
      table = _read_jsonl(path)
    else:
      raise InputError(f'unknown table format {ext!r} (expected .parquet, .csv or .jsonl)', path=path)
  except (pa.ArrowInvalid, OSError) as e:
    raise InputError(f'cannot read table: {e}', path=path) from e
  return table.select(columns) if columns else table


def _check_text(path: str) -> None:
  """Raises at the first line that is not UTF-8 (Arrow would silently read that column as bytes)."""
  for _, _, error in decoded_lines(path, 'utf-8'):
    if error is not None:
      raise error


def _read_jsonl(path: str) -> pa.Table:
  numbered = list(iter_jsonl(path))
  rows, where = [row for _, row in numbered], [{'line': line} for line, _ in numbered]
  # from_pylist takes its columns from the first row alone: list the union so no column is lost.
  names = list(dict.fromkeys(k for row in rows for k in row))
  rows, _ = drop_unconvertible(rows, where, names, path)
  return pa.Table.from_pydict({k: [row.get(k) for row in rows] for k in names})


def read_utterances(path: os.PathLike | str) -> pa.Table:
  try:
    return utterances_table(read_table(path))
  except InputError as e:
    if e.path is None:
      raise InputError(e.reason, path=path, item=e.item) from e
    raise


def read_votes(paths: os.PathLike | str | Sequence[os.PathLike | str]) -> pa.Table:
  """Reads and concatenates one or more votes tables (a list, or a comma-separated string; a string
  naming an existing file is that one file, commas in its path included)."""
  if isinstance(paths, (str, os.PathLike)):
    text = os.fspath(paths)
    paths = [text] if os.path.exists(text) else [p for p in text.split(',') if p]
  tables = []
  for path in paths:
    try:
      tables.append(votes_table(read_table(path)))
    except InputError as e:
      if e.path is None:
        raise InputError(e.reason, path=path, item=e.item) from e
      raise
  return concat(tables) if tables else empty_votes()


def column(table: pa.Table, name: str) -> np.ndarray:
  """A column as numpy (object array for strings)."""
  return table.column(name).to_numpy(zero_copy_only=False)
