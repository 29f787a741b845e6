"""The analysis's inputs: the tables, and the human, proxy and reference evidence counted from them.

The proxy is a votes table (its synthetic rows, or all rows when it has none, e.g. another human
rater pool such as CREMA-D's face-only raters) or a score-mode table (utt_id, prompt_id, p_<label>;
each scored prompt counts as one expected vote when pooling).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from perax import distributions
from perax.core.errors import InputError, SkipCounter
from perax.data import labels as labels_lib
from perax.data import tables


@dataclasses.dataclass(frozen=True)
class Inputs:
  """The tables to analyse and a description of where they came from (shown in the report).

  Attributes:
    human: human votes.
    proxy: proxy votes or scores.
    reference: dense reference votes, or None.
    utterances: utterances with splits, or None.
    sources: name -> where each table came from (paths, corpus and rater pool).
    proxy_path: the proxy table's file, named in errors about it.
  """

  human: pa.Table
  proxy: pa.Table
  reference: pa.Table | None = None
  utterances: pa.Table | None = None
  sources: Mapping[str, str] = dataclasses.field(default_factory=dict)
  proxy_path: str | None = None


def subsample(inputs: Inputs, max_items: int, seed: int) -> Inputs:
  """Inputs restricted to ``max_items`` utterances drawn at random (seeded) from the human votes."""
  ids = np.unique(tables.column(inputs.human, 'utt_id').astype(str))
  if len(ids) <= max_items:
    return inputs
  kept = pa.array(np.sort(np.random.default_rng(seed).choice(ids, max_items, replace=False)))

  def restrict(table):
    if table is None:
      return None
    return table.filter(pc.is_in(table.column('utt_id'), value_set=kept))

  return dataclasses.replace(
    inputs,
    human=restrict(inputs.human),
    proxy=restrict(inputs.proxy),
    reference=restrict(inputs.reference),
    utterances=restrict(inputs.utterances),
    sources={**inputs.sources, 'subsample': f'{max_items} utterances (seed {seed})'},
  )


def crema_d_inputs(path: str, human_pool: str = 'voice', proxy_pool: str = 'face') -> Inputs:
  """CREMA-D with one rater pool as the humans and another as the proxy (perax.data.corpora)."""
  from perax.data.corpora import load_corpus  # pylint: disable=g-import-not-at-top

  corpus = load_corpus('crema_d', path, modality=human_pool, reference_modality=proxy_pool)
  return Inputs(
    human=corpus.votes,
    proxy=corpus.reference_votes,
    utterances=corpus.utterances,
    sources={
      'corpus': f'CREMA-D at {path}',
      'human': f'{human_pool} rater pool',
      'proxy': f'{proxy_pool} rater pool',
    },
  )


@dataclasses.dataclass(frozen=True)
class Evidence:
  """Human, proxy and (optional) dense reference evidence on the same N utterances.

  Attributes:
    utt_ids: [N] utterances with human votes, proxy evidence and, if there is one, reference votes.
    n_h: [N, C] human counts.
    n_s: [N, C] proxy counts (votes, or n_prompts * p_s for scores).
    p_s: [N, C] proxy distributions.
    n_ref: [N, C] reference counts, or None when the human votes are the reference.
    split: [N] split of each utterance, or None without an utterances table.
    dropped: utterances left out, by reason.
    skipped: votes not counted (invalid, outside the label set), by reason.
  """

  utt_ids: np.ndarray
  n_h: np.ndarray
  n_s: np.ndarray
  p_s: np.ndarray
  n_ref: np.ndarray | None
  split: np.ndarray | None
  dropped: Mapping[str, int]
  skipped: SkipCounter


def is_votes_table(table: pa.Table) -> bool:
  """Whether a proxy table holds votes (utt_id, rater, label) rather than scores (p_<label>)."""
  return {'utt_id', 'rater', 'label'} <= set(table.column_names)


def proxy_votes(table: pa.Table) -> pa.Table:
  """The proxy's votes: the synthetic rows, or every row of a table without synthetic rows."""
  synthetic = tables.column(table, 'source') == tables.SYNTHETIC
  return table.filter(pa.array(synthetic)) if synthetic.any() else table


def gather_evidence(
  human: pa.Table,
  proxy: pa.Table,
  label_set: labels_lib.LabelSet,
  reference: pa.Table | None = None,
  utterances: pa.Table | None = None,
  proxy_path: str | None = None,
) -> Evidence:
  """Counts the human, proxy and reference evidence and keeps the utterances that have all of it.

  Args:
    human: votes; their human rows are counted.
    proxy: a votes table (see :func:`proxy_votes`) or a score table (utt_id, prompt_id, p_<label>).
    label_set: the classes.
    reference: dense reference votes (all rows counted), or None.
    utterances: restricts the analysis to its utterances and gives their splits, or None.
    proxy_path: the proxy table's file, named in errors.
  """
  skipped = SkipCounter()
  if utterances is not None:
    candidates = tables.column(utterances, 'utt_id').astype(object)
  else:
    candidates = np.unique(tables.column(human, 'utt_id').astype(str)).astype(object)
  utt_ids, n_h = distributions.vote_counts(human, label_set, candidates, source=tables.HUMAN, skipped=skipped)
  if is_votes_table(proxy):
    _, n_s = distributions.vote_counts(proxy_votes(proxy), label_set, utt_ids, skipped=skipped)
    p_s = distributions.to_distribution(n_s)
  else:
    try:
      n_s, p_s, _ = distributions.synthetic_evidence(utt_ids, label_set, None, proxy, skipped)
    except InputError as e:
      raise InputError(e.reason, path=e.path or proxy_path, item=e.item) from e
  has = {'without human votes': n_h.sum(-1) > 0, 'without proxy evidence': ~np.isnan(p_s).any(-1)}
  n_ref = None
  if reference is not None:
    _, n_ref = distributions.vote_counts(reference, label_set, utt_ids, skipped=skipped)
    has['without reference votes'] = n_ref.sum(-1) > 0
  keep = np.logical_and.reduce(list(has.values()))
  dropped, seen = {}, np.ones(len(utt_ids), bool)
  for reason, present in has.items():
    dropped[reason] = int((seen & ~present).sum())
    seen &= present
  if not keep.any():
    raise InputError(
      f'no utterance has human votes, proxy evidence'
      f'{" and reference votes" if reference is not None else ""} '
      f'in label set {label_set.name}; left out: {dropped}'
    )
  split = None
  if utterances is not None:
    split = distributions.align(
      utt_ids[keep],
      tables.column(utterances, 'utt_id'),
      tables.column(utterances, 'split').astype(object),
      fill=None,
    )
  return Evidence(
    utt_ids[keep],
    n_h[keep],
    n_s[keep],
    p_s[keep],
    None if n_ref is None else n_ref[keep],
    split,
    dropped,
    skipped,
  )
