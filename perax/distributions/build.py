"""The distributions table of a run: votes (and proxy scores) in, distributions.parquet and .json out.

distributions.parquet (:func:`build_distributions`) has the columns
  utt_id, n_human, n_synthetic, p_<label>..., entropy, entropy_human, ambiguity, majority, has_human
and, with ``keep_components``, ph_<label>... (human) and ps_<label>... (synthetic) after them.

``has_human`` is False where an utterance has no human vote inside the label set (n_human = 0): its
target is made of proxy evidence alone. Such rows stay in the table, flagged and counted by reason in
distributions.json, so that training and evaluation leave them out (:func:`human_targets`) unless
proxy-only targets are asked for.

distributions.json records the run's one ambiguity level definition (``levels``, a
:class:`perax.distributions.levels.LevelDefinition`); later stages read it back with
:func:`read_level_definition` and apply the same edges instead of fitting their own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from perax.core import jsonio
from perax.core.errors import InputError, SkipCounter
from perax.data import labels as labels_lib
from perax.data import tables
from perax.distributions.combining import combine_evidence, fit_kappa
from perax.distributions.counting import (
  count_skipped,
  majority,
  normalized_entropy,
  resolve_label_set,
  to_distribution,
  top_labels,
  vote_counts,
)
from perax.distributions.evidence import align, synthetic_evidence
from perax.distributions.levels import ALL, LEVELS, LevelDefinition, fit_levels

SKIP_SYNTHETIC_WITH_SCORES = 'synthetic vote unused: scores are the synthetic evidence'

# Why a row of the table has no human vote inside the label set (info['without_human']).
NO_HUMAN_VOTE = 'no human vote'
NO_HUMAN_VOTE_IN_SET = 'human votes, but none inside the label set'

DISTRIBUTIONS_JSON = 'distributions.json'


def _human_vote_totals(human_votes: pa.Table, row_ids: np.ndarray) -> np.ndarray:
  """[N] number of human vote rows of each utterance, whatever their label (invalid included)."""
  human = human_votes.filter(pc.equal(human_votes.column('source'), tables.HUMAN))
  position = pc.index_in(
    human.column('utt_id').combine_chunks().cast(pa.string()),
    value_set=pa.array(np.asarray(row_ids, object), type=pa.string()),
  )
  rows = position.drop_null().to_numpy(zero_copy_only=False).astype(np.int64)
  return np.bincount(rows, minlength=len(row_ids))


def _splits_of(row_ids: np.ndarray, utterances: pa.Table | None) -> np.ndarray | None:
  if utterances is None or 'split' not in utterances.column_names:
    return None
  return align(
    row_ids, tables.column(utterances, 'utt_id'), tables.column(utterances, 'split').astype(object), fill=None
  )


def _fit_kappa_on_split(
  n_h: np.ndarray, p_s: np.ndarray, splits: np.ndarray | None, split: str | None
) -> tuple[float, dict]:
  """kappa fitted on the human votes of ``split``'s utterances with human and synthetic evidence
  (every split's when ``split`` is None or 'all', or the utterances carry no splits), so held-out
  utterances' human votes never tune the targets. Returns (kappa, what it was fitted on)."""
  fit_rows = (n_h.sum(-1) > 0) & ~np.isnan(p_s).any(-1)
  where = 'every utterance'
  if splits is not None and split not in (None, ALL):
    fit_rows &= splits == split
    where = f'every {split!r} utterance'
    if not fit_rows.any():
      raise InputError(
        f'combine=dirichlet fits kappa on split {split!r}, but none of its utterances has both human '
        'votes and synthetic evidence; give --kappa or another --levels_from split'
      )
  kappa = fit_kappa(n_h[fit_rows], p_s[fit_rows])
  return kappa, {
    'votes': f'the human votes of {where} that has both human votes and synthetic evidence',
    'split': None if where == 'every utterance' else split,
    'n_utterances': int(fit_rows.sum()),
    'n_votes': float(n_h[fit_rows].sum()),
  }


def build_distributions(
  human_votes: pa.Table,
  synthetic_votes: pa.Table | None = None,
  synthetic_scores: pa.Table | None = None,
  *,
  label_set: labels_lib.LabelSet | str,
  combine: str = 'none',
  synthetic_weight: float = 1.0,
  mixture_lambda: float = 0.5,
  kappa: float | None = None,
  smoothing: float = 0.0,
  utterances: pa.Table | None = None,
  levels_from_split: str | None = 'train',
  fixed_edges: tuple[float, float] | None = None,
  level_definition: LevelDefinition | None = None,
  tie_policy: str = 'random',
  seed: int = 0,
  keep_components: bool = False,
) -> tuple[pa.Table, dict]:
  """The distributions table (columns in the module docstring) and a JSON-ready info dict.

  Args:
    human_votes: a votes table; its human rows are the human evidence, and, when
      ``synthetic_votes`` and ``synthetic_scores`` are both None, its synthetic rows are the
      synthetic evidence (so one mixed table can be passed). With ``synthetic_scores`` its
      synthetic rows are unused and counted as skipped.
    synthetic_votes: synthetic votes (its synthetic rows are used).
    synthetic_scores: score-mode proxy output (utt_id, prompt_id, p_<label>), averaged over prompts.
    label_set: the labels, or a name for perax.data.labels.get_label_set.
    combine: 'none' | 'pooled' | 'mixture' | 'dirichlet' (see
      :func:`perax.distributions.combining.combine_evidence`).
    synthetic_weight, mixture_lambda, kappa, smoothing: see ``combine_evidence``.
    utterances: optional utterances table: rows follow its order, votes for other utterances are
      skipped (and counted), and its ``split`` column serves ``levels_from_split``.
    levels_from_split: the split whose human-entropy tertiles set the level edges and whose human
      votes fit kappa (combine='dirichlet' without ``kappa``); None or 'all' uses every item (as
      does a missing ``utterances`` table).
    fixed_edges: fixed (e1, e2) thresholds instead of tertiles.
    level_definition: the run's level definition, applied as given (e.g. read from another run's
      distributions.json with :func:`read_level_definition`); excludes ``fixed_edges``.
    tie_policy, seed: majority tie policy (see :func:`perax.distributions.counting.majority`); ties
      are counted in the info.
    keep_components: also write ph_<label> (human) and ps_<label> (synthetic) columns.

  Returns:
    (table, info). Rows: utterances with evidence (human votes, or with combining also synthetic
    evidence); the others are counted in info['n_without_evidence']. ``p_<label>`` is the combined
    distribution (human only for 'none'); ``entropy`` is its normalised entropy; ``entropy_human``
    and ``ambiguity`` come from the unsmoothed human distribution (ambiguity null without human
    votes); ``n_synthetic`` is the synthetic evidence size (votes, or scored prompts).
    info holds: label_set, labels, combine, kappa, kappa_fit (what a fitted kappa was fitted on, or
    None), levels (the LevelDefinition as JSON), edges, edges_from (the definition in words),
    n_items, n_without_evidence, level_counts, n_without_human (rows without an in-set human vote),
    without_human ({reason: rows}), majority_counts, majority_ties, tie_policy, skipped
    ({reason: count}), skipped_examples.

  Raises:
    InputError: combining without synthetic evidence, both ``fixed_edges`` and
      ``level_definition``, or no human votes in the level split.
  """
  label_set = resolve_label_set(label_set)
  if fixed_edges is not None and level_definition is not None:
    raise InputError('give fixed level edges or a level definition, not both')
  skipped = SkipCounter()
  if utterances is not None:
    row_ids = tables.column(utterances, 'utt_id').astype(object)
  else:
    seen = [human_votes.column('utt_id')]
    if synthetic_votes is not None:
      seen.append(synthetic_votes.column('utt_id'))
    if synthetic_scores is not None and combine != 'none':
      seen.append(synthetic_scores.column('utt_id'))
    row_ids = (
      pc.unique(pa.chunked_array([c.cast(pa.string()) for c in seen]))
      .to_numpy(zero_copy_only=False)
      .astype(object)
    )
  if synthetic_votes is None and synthetic_scores is None:
    synthetic_votes = human_votes
  elif synthetic_votes is None:
    synthetic_rows = pc.equal(human_votes.column('source'), tables.SYNTHETIC).to_numpy(zero_copy_only=False)
    count_skipped(
      skipped,
      SKIP_SYNTHETIC_WITH_SCORES,
      synthetic_rows,
      human_votes.column('utt_id'),
      human_votes.column('label'),
    )
  _, n_h = vote_counts(human_votes, label_set, row_ids, source=tables.HUMAN, skipped=skipped)
  n_s, p_s, synthetic_size = synthetic_evidence(
    row_ids, label_set, synthetic_votes, synthetic_scores, skipped
  )
  if combine != 'none' and np.isnan(p_s).all():
    raise InputError(
      f'combine={combine!r} needs synthetic evidence, but no utterance has synthetic votes or scores'
    )
  kappa_fit = None
  if combine == 'dirichlet' and kappa is None:
    kappa, kappa_fit = _fit_kappa_on_split(n_h, p_s, _splits_of(row_ids, utterances), levels_from_split)
  p, kappa = combine_evidence(
    combine,
    n_h,
    n_s,
    p_s,
    synthetic_weight=synthetic_weight,
    mixture_lambda=mixture_lambda,
    kappa=kappa,
    smoothing=smoothing,
  )
  keep = ~np.isnan(p).any(-1)
  p_h = to_distribution(n_h)
  entropy_h = normalized_entropy(p_h)
  if level_definition is None:
    splits = _splits_of(row_ids[keep], utterances)
    split = None if splits is None else levels_from_split
    level_definition = fit_levels(entropy_h[keep], splits, split=split, fixed_edges=fixed_edges)
  has_human = n_h.sum(-1) > 0
  human_rows = _human_vote_totals(human_votes, row_ids)
  without_human = {
    NO_HUMAN_VOTE: int((keep & ~has_human & (human_rows == 0)).sum()),
    NO_HUMAN_VOTE_IN_SET: int((keep & ~has_human & (human_rows > 0)).sum()),
  }
  p, p_h, p_s, entropy_h, has_human = p[keep], p_h[keep], p_s[keep], entropy_h[keep], has_human[keep]
  levels = level_definition.levels(entropy_h)
  top = majority(p, tie_policy=tie_policy, seed=seed)
  majority_names = np.asarray(label_set.labels + (None,), dtype=object)[top]
  columns = {
    'utt_id': pa.array(row_ids[keep], type=pa.string()),
    'n_human': n_h[keep].sum(-1),
    'n_synthetic': synthetic_size[keep],
  }
  columns.update(zip(tables.label_columns(label_set.labels), p.T))
  columns.update(
    {
      'entropy': normalized_entropy(p),
      'entropy_human': entropy_h,
      'ambiguity': pa.array(levels, type=pa.string()),
      'majority': pa.array(majority_names, type=pa.string()),
      'has_human': pa.array(has_human, type=pa.bool_()),
    }
  )
  if keep_components:
    columns.update(zip((f'ph_{label}' for label in label_set.labels), p_h.T))
    columns.update(zip((f'ps_{label}' for label in label_set.labels), p_s.T))
  table = pa.table(columns)
  info = {
    'label_set': label_set.name,
    'labels': list(label_set.labels),
    'combine': combine,
    'kappa': kappa,
    'kappa_fit': kappa_fit,
    'levels': level_definition.to_json(),
    'edges': list(level_definition.edges),
    'edges_from': level_definition.describe(),
    'n_items': int(keep.sum()),
    'n_without_evidence': int((~keep).sum()),
    'level_counts': {level: int((levels == level).sum()) for level in LEVELS},
    'n_without_human': int((~has_human).sum()),
    'without_human': without_human,
    'majority_counts': {label: int((majority_names == label).sum()) for label in label_set.labels},
    'majority_ties': int((top_labels(p).sum(-1) > 1).sum()),
    'tie_policy': tie_policy,
    'skipped': dict(skipped.counts),
    'skipped_examples': list(skipped.examples),
  }
  return table, info


def human_targets(table: pa.Table, proxy_only: bool = False) -> tuple[pa.Table, int]:
  """The rows of a distributions table whose target rests on at least one in-set human vote.

  Args:
    table: a distributions table (``has_human``, or for older tables ``n_human``).
    proxy_only: keep the rows without human votes too (targets of proxy evidence alone).

  Returns:
    (the rows kept, how many were left out for having no human vote inside the label set).
  """
  if proxy_only:
    return table, 0
  if 'has_human' in table.column_names:
    has = tables.column(table, 'has_human').astype(bool)
  else:
    has = tables.column(table, 'n_human') > 0
  return table.filter(pa.array(has)), int((~has).sum())


def write_distributions(table: pa.Table, info: Mapping, out_dir: str) -> tuple[str, str]:
  """Writes <out_dir>/distributions.parquet and <out_dir>/distributions.json (strict JSON), atomically."""
  parquet_path = tables.write_table(table, os.path.join(out_dir, 'distributions.parquet'))
  json_path = jsonio.write_json(os.path.join(out_dir, DISTRIBUTIONS_JSON), info)
  return parquet_path, json_path


def read_level_definition(path: os.PathLike | str) -> LevelDefinition:
  """The level definition recorded in a distributions.json (or an analysis summary.json).

  Args:
    path: the JSON file, or a directory holding distributions.json.

  Raises:
    InputError: the file is unreadable or records no level definition.
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    path = os.path.join(path, DISTRIBUTIONS_JSON)
  if not os.path.exists(path):
    raise InputError('no such file (a distributions.json with a level definition)', path=path)
  record = jsonio.read_json(path)
  if not isinstance(record, Mapping) or not isinstance(record.get('levels'), Mapping):
    raise InputError('records no ambiguity level definition ("levels")', path=path)
  try:
    return LevelDefinition.from_json(record['levels'])
  except (KeyError, TypeError, ValueError) as e:
    raise InputError(f'bad level definition: {e}', path=path) from None


def describe_kappa(kappa: float | None, kappa_fit: Mapping | None) -> str:
  """kappa in words, with what it was fitted on: 'kappa 1.379, fitted on the human votes of ...'."""
  if kappa is None:
    return 'no kappa (no Dirichlet combination)'
  if kappa_fit is None:
    return f'kappa {kappa:.4g} (given)'
  return (
    f'kappa {kappa:.4g}, fitted by empirical Bayes on {kappa_fit["votes"]} '
    f'({kappa_fit["n_utterances"]} utterances)'
  )


def format_summary(info: Mapping) -> str:
  """A short plain-text summary of a build: items, level definition and counts, majority, skips."""
  n_items = max(info['n_items'], 1)
  lines = [
    f'{info["n_items"]} utterances with evidence ({info["n_without_evidence"]} without); '
    f'label set {info["label_set"]}; combine={info["combine"]}'
  ]
  if info['kappa'] is not None:
    lines.append(describe_kappa(info['kappa'], info.get('kappa_fit')))
  lines.append(f'ambiguity levels: {info["edges_from"]}')
  lines.append(f'{"level":<12}{"count":>8}{"share":>8}')
  lines.extend(f'{level:<12}{n:>8}{n / n_items:>8.1%}' for level, n in info['level_counts'].items())
  if info['n_without_human']:
    lines.append(f'{"no human":<12}{info["n_without_human"]:>8}{info["n_without_human"] / n_items:>8.1%}')
    reasons = '; '.join(f'{n} x {why}' for why, n in info.get('without_human', {}).items() if n)
    lines.append(
      f'{info["n_without_human"]} targets without an in-set human vote (proxy evidence only; '
      f'left out of training and evaluation unless proxy-only targets are asked for): {reasons}'
    )
  lines.append(f'{"majority":<12}{"count":>8}{"share":>8}')
  lines.extend(f'{label:<12}{n:>8}{n / n_items:>8.1%}' for label, n in info['majority_counts'].items())
  lines.append(f'majority ties: {info["majority_ties"]} (broken by policy {info["tie_policy"]!r})')
  skipped = info['skipped']
  if skipped:
    reasons = '; '.join(f'{n} x {reason}' for reason, n in sorted(skipped.items()))
    lines.append(f'skipped votes: {sum(skipped.values())} ({reasons}); first: {info["skipped_examples"][0]}')
  else:
    lines.append('skipped votes: 0')
  return '\n'.join(lines)
