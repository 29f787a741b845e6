"""Synthetic evidence from tables: proxy scores averaged over prompts, or synthetic votes counted.

Tables (pyarrow) in, [N, C] numpy arrays out, aligned to the caller's utterances.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from perax.core.errors import InputError, SkipCounter
from perax.data import labels as labels_lib
from perax.data import tables
from perax.distributions.counting import resolve_label_set, to_distribution, vote_counts


def scores_distribution(
  scores: pa.Table, label_set: labels_lib.LabelSet | str, path: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Averages proxy scores over prompts: p_s per utterance.

  Args:
    scores: a score-mode table with utt_id, prompt_id and p_<label> for exactly the labels of the
      set (any order). Each row is renormalised to sum to 1 before averaging.
    label_set: the labels, or a name for perax.data.labels.get_label_set.
    path: the file the table came from, named in errors.

  Returns:
    utt_ids [N] (first appearance order), p_s [N, C] float64, n_prompts [N] int64 (rows averaged).

  Raises:
    InputError: missing or extra p_<label> columns, or a row with a negative, non-finite or all-zero
      score.
  """
  label_set = resolve_label_set(label_set)
  wanted = tables.label_columns(label_set.labels)
  present = [c for c in scores.column_names if c.startswith('p_')]
  missing, extra = sorted(set(wanted) - set(present)), sorted(set(present) - set(wanted))
  if 'utt_id' not in scores.column_names or missing or extra:
    raise InputError(
      f'scores need utt_id and exactly the columns {wanted}; missing '
      f'{missing + ([] if "utt_id" in scores.column_names else ["utt_id"])}, '
      f'extra {extra}',
      path=path,
    )
  values = np.stack(
    [scores.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in wanted], axis=-1
  )
  totals = values.sum(-1)
  bad = ~np.isfinite(values).all(-1) | (values < 0).any(-1) | ~(totals > 0)
  utt_col = scores.column('utt_id').combine_chunks()
  if bad.any():
    i = int(np.flatnonzero(bad)[0])
    raise InputError(
      f'score row {i} is not a non-negative, non-zero distribution: {values[i].tolist()}',
      path=path,
      item=utt_col[i].as_py(),
    )
  encoded = pc.dictionary_encode(utt_col)
  rows = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
  utt_ids = encoded.dictionary.to_numpy(zero_copy_only=False).astype(object)
  num_labels = len(wanted)
  normalised = values / totals[:, None]
  sums = np.stack(
    [np.bincount(rows, weights=normalised[:, c], minlength=len(utt_ids)) for c in range(num_labels)], axis=-1
  )
  n_prompts = np.bincount(rows, minlength=len(utt_ids))
  return utt_ids, sums / n_prompts[:, None], n_prompts


def align(
  utt_ids: np.ndarray, source_ids: np.ndarray, values: np.ndarray, fill: float = np.nan
) -> np.ndarray:
  """Rows of ``values`` (keyed by ``source_ids``) in ``utt_ids`` order; ``fill`` where absent."""
  position = pc.index_in(
    pa.array(np.asarray(utt_ids, object), type=pa.string()),
    value_set=pa.array(np.asarray(source_ids, object), type=pa.string()),
  )
  index = position.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
  values = np.asarray(values)
  out = np.full((len(index),) + values.shape[1:], fill, dtype=np.result_type(values, type(fill)))
  out[index >= 0] = values[index[index >= 0]]
  return out


def synthetic_evidence(
  utt_ids: np.ndarray,
  label_set: labels_lib.LabelSet | str,
  synthetic_votes: pa.Table | None,
  synthetic_scores: pa.Table | None,
  skipped: SkipCounter,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Synthetic counts n_s, distributions p_s [N, C] and evidence sizes [N] for ``utt_ids``.

  From votes: n_s are the counts and the size is N_s. From scores (averaged over prompts): each
  scored prompt counts as one expected vote, n_s = n_prompts p_s, and the size is n_prompts. Rows
  without synthetic evidence have zero counts, NaN p_s and size 0.
  """
  label_set = resolve_label_set(label_set)
  num_labels = len(label_set)
  if synthetic_votes is not None and synthetic_scores is not None:
    raise InputError('give synthetic votes or synthetic scores, not both')
  if synthetic_scores is not None:
    score_ids, score_p, n_prompts = scores_distribution(synthetic_scores, label_set)
    p_s = align(utt_ids, score_ids, score_p)
    size = align(utt_ids, score_ids, n_prompts.astype(np.float64), fill=0.0)
    return np.nan_to_num(p_s) * size[:, None], p_s, size
  if synthetic_votes is None:
    return (
      np.zeros((len(utt_ids), num_labels)),
      np.full((len(utt_ids), num_labels), np.nan),
      np.zeros(len(utt_ids)),
    )
  _, n_s = vote_counts(synthetic_votes, label_set, utt_ids, source=tables.SYNTHETIC, skipped=skipped)
  return n_s, to_distribution(n_s), n_s.sum(-1)
