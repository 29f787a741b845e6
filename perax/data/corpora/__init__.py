"""Corpus loaders by name, and ``prepare``: load a corpus and write its Parquet tables.

  corpus = load_corpus('crema_d', '/data/crema-d', modality='voice')
  paths = prepare('emodb', '/data/emodb', 'runs/emodb', label_set='emodb')

Each loader is a module ``perax.data.corpora.<name>`` with ``load(path, *, lenient=False, **options) ->
Corpus``; modules are imported on first use. prepare writes ``utterances.parquet`` and
``votes.parquet`` (and ``reference_votes.parquet`` when the corpus has a reference pool, and
``protocol.json`` when it has a protocol) into the output directory and reports what it loaded:
utterances per split, votes per label, what the corpus protocol kept and dropped and why, how many
votes a label set covers, and everything skipped. prepare hands its ``label_set`` to loaders that take
one (IEMOCAP, MSP-Podcast), which refuse a set that disagrees with their protocol.
"""

from __future__ import annotations

import collections
import importlib
import inspect
import os
from collections.abc import Callable
from typing import Optional

import numpy as np

from perax.core import jsonio, log
from perax.core.errors import InputError
from perax.data import labels as labels_lib
from perax.data import tables
from perax.data.corpora import audio_info, protocols
from perax.data.corpora.base import Corpus
from perax.data.corpora.protocols import default_test_split, test_splits  # re-exported

CORPORA = ('iemocap', 'msp_podcast', 'crema_d', 'emodb', 'manifest', 'demo')
DEMO_DIRNAME = 'demo_corpus'
UTTERANCES_FILE = 'utterances.parquet'
VOTES_FILE = 'votes.parquet'
REFERENCE_VOTES_FILE = 'reference_votes.parquet'
PROTOCOL_FILE = 'protocol.json'


def _module(name: str):
  if name not in CORPORA:
    raise InputError(f'unknown corpus {name!r}; known: {", ".join(CORPORA)}')
  return importlib.import_module(f'perax.data.corpora.{name}')


_NATURAL_LABEL_SETS = {
  ('iemocap', '4class'): 'iemocap4',
  ('iemocap', 'any_in_set'): 'iemocap4',
  ('iemocap', 'full'): 'iemocap',
  ('msp_podcast', '8class'): 'msp_podcast',
  ('crema_d', None): 'crema_d',
  ('emodb', None): 'emodb',
  ('demo', None): 'demo',  # the demo's four classes (iemocap4's)
}
DEFAULT_PROTOCOLS = {'iemocap': '4class', 'msp_podcast': '8class'}


def natural_label_set(name: str, protocol: str | None = None, outside_votes: str = 'drop') -> str | None:
  """The label set a corpus's targets are over under its protocol (None: the user must choose one).

  IEMOCAP: iemocap4 for '4class' and 'any_in_set', iemocap for 'full'; MSP-Podcast: msp_podcast; with
  ``outside_votes='other'`` the set gains 'other' (iemocap4_other, msp_podcast_other). CREMA-D and
  EmoDB: their own sets; demo: demo (iemocap4's classes); manifest and protocol 'none': None.
  """
  protocol = protocol or DEFAULT_PROTOCOLS.get(name)
  found = _NATURAL_LABEL_SETS.get((name, protocol))
  if found and outside_votes == 'other' and name in DEFAULT_PROTOCOLS:
    return protocols.with_other(labels_lib.get_label_set(found)).name
  return found


def load_corpus(name: str, path: os.PathLike | str, **options) -> Corpus:
  """Loads corpus ``name`` from ``path`` with its loader's options (lenient=..., ...)."""
  return _module(name).load(path, **options)


def _counts(values: list) -> str:
  return ', '.join(f'{key}: {count}' for key, count in collections.Counter(values).most_common())


def summary(corpus: Corpus, label_set: labels_lib.LabelSet | None = None) -> list[str]:
  """Lines describing a loaded corpus: sizes, splits, missing audio and text, labels, skips."""
  utterances, votes = corpus.utterances, corpus.votes
  n = utterances.num_rows
  lines = [
    f'{corpus.name}: {n} utterances, {len(set(tables.column(utterances, "speaker")))} speakers',
    f'utterances per split: {_counts(tables.column(utterances, "split").tolist())}',
    f'utterances without audio: {utterances.column("audio_path").null_count} of {n}; '
    f'without transcript: {utterances.column("transcript").null_count} of {n}',
    f'votes: {votes.num_rows} from {len(set(tables.column(votes, "rater")))} rater ids on '
    f'{len(set(tables.column(votes, "utt_id")))} utterances',
    f'votes per label: {_counts(tables.column(votes, "label").tolist())}',
  ]
  if corpus.protocol is not None:
    lines.extend(corpus.protocol.lines())
  if label_set is None and corpus.protocol is not None and corpus.protocol.label_set:
    label_set = labels_lib.get_label_set(corpus.protocol.label_set)
  if label_set is not None:
    index = label_set.index(votes.column('label'))
    invalid = int(np.sum(tables.column(votes, 'label') == labels_lib.INVALID))
    merged = f' (merging {dict(label_set.merges)})' if label_set.merges else ''
    lines.append(
      f'label set {label_set.name}{merged}: {int(np.sum(index >= 0))} votes in the set, '
      f'{int(np.sum(index < 0)) - invalid} outside it, {invalid} invalid'
    )
  if corpus.reference_votes is not None:
    reference = corpus.reference_votes
    lines.append(
      f'reference votes: {reference.num_rows} on {len(set(tables.column(reference, "utt_id")))} utterances'
    )
  lines.append(corpus.skipped.summary())
  return lines


def write_corpus(corpus: Corpus, out_dir: os.PathLike | str) -> dict[str, str]:
  """Writes the corpus's tables as Parquet (atomically); returns {'utterances': path, ...}."""
  out_dir = os.fspath(out_dir)
  paths = {
    'utterances': tables.write_table(corpus.utterances, os.path.join(out_dir, UTTERANCES_FILE)),
    'votes': tables.write_table(corpus.votes, os.path.join(out_dir, VOTES_FILE)),
  }
  if corpus.reference_votes is not None:
    paths['reference_votes'] = tables.write_table(
      corpus.reference_votes, os.path.join(out_dir, REFERENCE_VOTES_FILE)
    )
  if corpus.protocol is not None:
    paths['protocol'] = jsonio.write_json(os.path.join(out_dir, PROTOCOL_FILE), corpus.protocol.to_json())
  return paths


def prepare(
  corpus: str,
  corpus_path: os.PathLike | str | None,
  out_dir: os.PathLike | str,
  *,
  label_set: str | None = None,
  lenient: bool = False,
  seed: int = 0,
  echo: Callable[[str], None] = print,
  **options,
) -> dict[str, str]:
  """Loads a corpus, writes its tables into ``out_dir`` and echoes a summary.

  Args:
    corpus: one of :data:`CORPORA`.
    corpus_path: the corpus's directory or manifest. For 'demo', a directory that is generated
      (with ``seed``) when it is absent or empty; None means ``<out_dir>/demo_corpus``.
    out_dir: where utterances.parquet, votes.parquet (and reference_votes.parquet) go.
    label_set: a label set name or comma-separated labels whose coverage of the votes is reported.
    lenient: skip and count malformed input instead of raising.
    seed: seeds the demo corpus's generation and the speaker splits of corpora that draw them.
    echo: receives the summary, one line per call.
    **options: the loader's own options (modality=..., self_evaluations=..., votes=...; IEMOCAP and
      MSP-Podcast: protocol=..., outside_votes=..., and their own: see their load()).

  Returns:
    {'utterances': path, 'votes': path[, 'reference_votes': path][, 'protocol': path]}; protocol.json
    (IEMOCAP, MSP-Podcast) records what the corpus protocol kept and dropped, the label set the run
    must use, and the corpus's test splits (perax.data.corpora.protocols.ProtocolReport).
  """
  module = _module(corpus)
  if corpus_path is None:
    if corpus != 'demo':
      raise InputError(f'corpus {corpus!r} needs a corpus path')
    corpus_path = os.path.join(os.fspath(out_dir), DEMO_DIRNAME)
  if corpus == 'demo' and (not os.path.isdir(corpus_path) or not os.listdir(corpus_path)):
    echo(f'generating the demo corpus in {corpus_path} (seed {seed})')
    module.generate(corpus_path, seed=seed)
  accepted = inspect.signature(module.load).parameters
  if 'seed' in accepted:
    options['seed'] = seed
  if 'label_set' in accepted:
    options['label_set'] = label_set
  loaded = module.load(corpus_path, lenient=lenient, **options)
  chosen = labels_lib.get_label_set(label_set) if label_set else None
  for line in summary(loaded, chosen):
    echo(line)
  long_clips = audio_info.long_clips_warning(loaded.utterances)
  if long_clips:
    log.warning(long_clips, stage='prepare')
  paths = write_corpus(loaded, out_dir)
  echo(f'wrote {", ".join(paths.values())}')
  return paths
