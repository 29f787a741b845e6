"""Writing a DiME-Aug plan out as a corpus: wav files, utterances.parquet and distributions.parquet.

For inspection and for other toolkits.  The plan's augmented rows are rendered
(:func:`perax.augment.audio_mix.render`) to ``<out_dir>/wav/<utt_id>.wav`` (16 kHz, 16-bit PCM); its
original rows (a balanced evaluation set's, or the split's own utterances) keep their own audio.
Both tables carry the provenance columns origin, anchor_id, partner_id, weight, variant and gap_s
after the standard columns.

distributions.parquet follows perax.distributions' layout: utt_id, n_human, n_synthetic,
``p_<label>``, entropy (normalised), ambiguity, majority.  Originals keep their input row (vote
counts included, where the input has them); an augmented example has null vote counts, and its
ambiguity is the level of its own target under the plan's level definition (an original's, where the
input has no ambiguity column, is that of its human entropy under the same definition).

Rows without human votes (``has_human`` false, or ``n_human`` 0) are left out before planning unless
``proxy_only_targets`` is set; they are counted and logged.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from perax import distributions as dist
from perax.augment import dime_aug
from perax.augment.audio_mix import AUGMENTED, SAMPLE_RATE, render
from perax.augment.dime_aug import target_matrix
from perax.core import log
from perax.core.errors import InputError
from perax.core.progress import Progress
from perax.data import audio
from perax.data.tables import (
  column,
  concat,
  label_columns,
  labels_from_columns,
  utterances_table,
  write_table,
)
from perax.distributions.levels import LevelDefinition

PROVENANCE = ('origin', 'anchor_id', 'partner_id', 'weight', 'variant', 'gap_s')


def _utterance_rows(utterances: pa.Table) -> dict[str, dict]:
  return {row['utt_id']: row for row in utterances.to_pylist()}


def write_augmented_set(
  plan: pa.Table,
  utterances: pa.Table,
  distributions: pa.Table,
  labels: Sequence[str],
  levels: LevelDefinition,
  out_dir: str,
) -> tuple[str, str]:
  """Renders and writes a plan (augmented and original rows alike).

  Args:
    plan: a DiME-Aug plan or balanced evaluation set (perax.augment.dime_aug).
    utterances: the corpus's utterances (anchors and partners are looked up here).
    distributions: the corpus's distributions (originals' rows are copied from here).
    labels: the label set's labels, in column order.
    levels: the level definition the plan used.
    out_dir: created if needed; gets wav/, utterances.parquet and distributions.parquet.

  Returns:
    (utterances.parquet path, distributions.parquet path).

  Raises:
    InputError: a plan row names an utterance missing from ``utterances`` or without audio.
  """
  labels = list(labels)
  by_id = _utterance_rows(utterances)
  dist_row = {u: k for k, u in enumerate(column(distributions, 'utt_id'))}

  def load(utt_id: str) -> np.ndarray:
    row = by_id.get(utt_id)
    if row is None or row['audio_path'] is None:
      raise InputError('plan names an utterance that is unknown or has no audio', item=utt_id)
    segment = [None if v is None or np.isnan(v) else v for v in (row['start_s'], row['end_s'])]
    return audio.load_audio(row['audio_path'], sr=SAMPLE_RATE, start_s=segment[0], end_s=segment[1])

  rows = plan.to_pylist()
  progress = Progress(
    total=sum(r['origin'] == AUGMENTED for r in rows),
    unit='examples',
    what='DiME-Aug render',
    every_s=5.0,
  )
  wav_dir = os.path.join(out_dir, 'wav')
  out_utterances = []
  for row in rows:
    if row['origin'] == AUGMENTED:
      waveform, transcript, _ = render(row, load)
      path = os.path.abspath(os.path.join(wav_dir, f'{row["utt_id"]}.wav'))
      audio.write_wav(path, waveform, SAMPLE_RATE)
      anchor = by_id[row['anchor_id']]
      entry = dict(
        utt_id=row['utt_id'],
        audio_path=path,
        duration_s=waveform.size / SAMPLE_RATE,
        transcript=transcript,
        speaker=row['speaker'],
        split=row['split'],
        fold=anchor['fold'],
        corpus=anchor['corpus'],
      )
      progress.update()
    else:
      entry = {
        name: by_id[row['utt_id']][name] for name in utterances.column_names if name in by_id[row['utt_id']]
      }
    entry.update((name, row[name]) for name in PROVENANCE)
    out_utterances.append(entry)
  progress.close()
  utterances_path = write_table(utterances_table(out_utterances), os.path.join(out_dir, 'utterances.parquet'))
  return utterances_path, write_table(
    _distributions_table(plan, distributions, dist_row, labels, levels),
    os.path.join(out_dir, 'distributions.parquet'),
  )


def _distributions_table(
  plan: pa.Table,
  distributions: pa.Table,
  dist_row: dict[str, int],
  labels: Sequence[str],
  levels: LevelDefinition,
) -> pa.Table:
  """distributions.parquet rows for the plan: input rows for originals, computed for augmented."""
  p = target_matrix(plan, labels)
  augmented = column(plan, 'origin') == AUGMENTED
  source_rows = [dist_row[u] if not a else -1 for u, a in zip(column(plan, 'utt_id'), augmented)]

  def copied(name: str, dtype) -> pa.Array:
    values = (
      column(distributions, name)
      if name in distributions.column_names
      else np.full(distributions.num_rows, None, object)
    )
    return pa.array([None if k < 0 else values[k] for k in source_rows], type=dtype)

  entropy = dist.normalized_entropy(p)
  own_levels = levels.levels(entropy)
  if 'entropy_human' in distributions.column_names:
    human = copied('entropy_human', pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
    own_levels = np.where(augmented | np.isnan(human), own_levels, levels.levels(human))
  if 'ambiguity' in distributions.column_names:
    copied_levels = copied('ambiguity', pa.string()).to_numpy(zero_copy_only=False)
    own_levels = np.where(augmented, own_levels, copied_levels)
  columns = {
    'utt_id': column(plan, 'utt_id'),
    'n_human': copied('n_human', pa.float64()),
    'n_synthetic': copied('n_synthetic', pa.float64()),
  }
  columns.update(zip(label_columns(labels), p.T))
  columns.update(
    entropy=entropy,
    ambiguity=pa.array(own_levels, pa.string()),
    majority=np.asarray(labels, object)[dist.majority(p)],
  )
  columns.update((name, column(plan, name)) for name in PROVENANCE)
  return pa.table(columns)


def human_rows(distributions: pa.Table) -> np.ndarray:
  """[N] bool: the row's target holds human votes (``has_human``, else ``n_human`` > 0; every row
  where the table has neither column)."""
  if 'has_human' in distributions.column_names:
    return np.asarray([bool(v) for v in column(distributions, 'has_human')], bool)
  if 'n_human' in distributions.column_names:
    counts = column(distributions, 'n_human').astype(np.float64)
    return np.nan_to_num(counts) > 0
  return np.ones(distributions.num_rows, bool)


def keep_human_targets(distributions: pa.Table, proxy_only_targets: bool, what: str) -> pa.Table:
  """``distributions`` without the rows that have no human vote (unless ``proxy_only_targets``);
  what is left out is counted in a warning naming ``what`` it was left out of."""
  if proxy_only_targets:
    return distributions
  human = human_rows(distributions)
  if not human.all():
    log.warning(
      f'{int((~human).sum())} of {len(human)} utterances have no human vote: left out of {what} '
      '(set proxy_only_targets to use their proxy-only targets)',
      stage='targets',
    )
  return distributions.filter(pa.array(human))


def augment(
  utterances: pa.Table,
  distributions: pa.Table,
  out_dir: str,
  *,
  split: str = 'train',
  balance: str = 'classes',
  size: int | None = None,
  seed: int = 0,
  config: dime_aug.MixConfig | None = None,
  levels: LevelDefinition | None = None,
  levels_split: str = 'train',
  eval_set: bool = False,
  proxy_only_targets: bool = False,
) -> dict[str, str]:
  """Plans DiME-Aug for one split (or its balanced evaluation set) and writes it out.

  Args:
    utterances, distributions: the corpus's tables (``p_<label>`` columns give the labels).
    out_dir: gets plan.parquet, wav/, utterances.parquet and distributions.parquet.
    split: the split to balance (anchors and partners both come from it).
    balance: 'classes' or 'cells'.
    size: examples wanted in all, originals included; None brings every class (cell) up to the largest.
    seed: seeds every random choice.
    config: how pairs are drawn and mixed (default :class:`perax.augment.dime_aug.MixConfig`).
    levels: the run's level definition; None fits tertiles of ``levels_split``'s human entropy.
    eval_set: build the balanced evaluation set of ``split`` (originals first, augmented fill the
      deficits, no speaker leaks) instead of the balanced training set.
    proxy_only_targets: keep rows without human votes (their targets are proxy evidence alone).

  Returns:
    {'plan', 'utterances', 'distributions'}: the paths written.
  """
  labels = labels_from_columns(distributions.column_names)
  distributions = keep_human_targets(distributions, proxy_only_targets, f'DiME-Aug of split {split!r}')
  if levels is None:
    levels = dime_aug.levels_from_split(utterances, distributions, labels, levels_split)
  options = dict(split=split, balance=balance, size=size, seed=seed, config=config or dime_aug.MixConfig())
  if eval_set:
    plan = dime_aug.build_eval_set(utterances, distributions, labels, levels, **options)
  else:
    plan = concat(
      [
        dime_aug.original_rows(utterances, distributions, labels, levels, split),
        dime_aug.plan_augmentation(utterances, distributions, labels, levels, **options),
      ]
    )
  log.info(dime_aug.plan_summary(plan, levels), stage='DiME-Aug')
  plan_path = write_table(plan, os.path.join(out_dir, 'plan.parquet'))
  utterances_path, distributions_path = write_augmented_set(
    plan, utterances, distributions, labels, levels, out_dir
  )
  return {'plan': plan_path, 'utterances': utterances_path, 'distributions': distributions_path}
