"""Example records of a split (+ a DiME-Aug plan), their audio length buckets and the bucketed batch plan.

Per epoch every example is in exactly one global batch; at most one batch per epoch has padding
(-1 rows, which come last).  Each process takes rows [p * B_local, (p + 1) * B_local) of every global
batch, so the bucket (hence the array shapes) is equal on all processes at every step.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import grain
import numpy as np
import pyarrow as pa

from perax.augment.audio_mix import ORIGINAL, SAMPLE_RATE, utterance_durations
from perax.augment.dime_aug import target_matrix
from perax.core.errors import InputError
from perax.data import features
from perax.data.tables import column, label_columns

# ----------------------------------------------------------------------------------------------
# Examples.


def _nan_to_none(value: float) -> float | None:
  return None if value is None or math.isnan(value) else float(value)


def example_records(
  utterances: pa.Table,
  distributions: pa.Table,
  labels: Sequence[str],
  split: str,
  plan: pa.Table | None = None,
  originals: bool = True,
) -> list[dict]:
  """One record per example: the split's utterances with a target, then the plan's rows.

  A record is a plan row (see :data:`perax.augment.dime_aug.PLAN_COLUMNS`; originals get origin 'original'
  with themselves as anchor) plus ``sources``: utt_id -> (audio_path, start_s or None, end_s or
  None) for the anchor and the partner, everything :func:`perax.augment.audio_mix.render` needs to load it.

  Args:
    utterances, distributions, labels: the corpus, its targets and their labels.
    split: anchors and partners of the plan must be utterances of this split.
    plan: DiME-Aug rows (a plan or a balanced evaluation set), or None.
    originals: include every utterance of the split that has a target (False for an evaluation set,
      which lists its originals itself).

  Raises:
    InputError: a plan row names an utterance outside the split or without audio, or there is no
      example.
  """
  labels = list(labels)
  names = label_columns(labels)
  utts = utterances.filter(pa.array(column(utterances, 'split') == split))
  p = target_matrix(distributions, labels)
  row_of = {u: k for k, u in enumerate(column(distributions, 'utt_id'))}
  utts = utts.filter(pa.array([u in row_of for u in column(utts, 'utt_id')], pa.bool_()))
  ids = column(utts, 'utt_id')
  paths, starts, ends = (column(utts, name) for name in ('audio_path', 'start_s', 'end_s'))
  sources = {u: (paths[k], _nan_to_none(starts[k]), _nan_to_none(ends[k])) for k, u in enumerate(ids)}
  records = []
  if originals:
    transcripts, durations = column(utts, 'transcript'), utterance_durations(utts)
    for k, u in enumerate(ids):
      record = dict(
        utt_id=u,
        origin=ORIGINAL,
        anchor_id=u,
        partner_id=None,
        weight=1.0,
        variant=None,
        gap_s=None,
        duration_s=float(durations[k]),
        transcript=transcripts[k],
      )
      record.update(zip(names, p[row_of[u]].tolist()))
      records.append(record)
  for row in [] if plan is None else plan.to_pylist():
    for role in ('anchor_id', 'partner_id'):
      if row[role] is not None and row[role] not in sources:
        raise InputError(
          f'plan {role} {row[role]!r} is not an utterance of split {split!r} with a target',
          item=row['utt_id'],
        )
    record = {
      name: row[name]
      for name in (
        'utt_id',
        'origin',
        'anchor_id',
        'partner_id',
        'weight',
        'variant',
        'gap_s',
        'duration_s',
        'transcript',
      )
    }
    record.update((name, row[name]) for name in names)
    records.append(record)
  if not records:
    raise InputError(f'split {split!r} has no example with a target distribution')
  for record in records:
    record['sources'] = {u: sources[u] for u in (record['anchor_id'], record['partner_id']) if u is not None}
    if any(path is None for path, _, _ in record['sources'].values()):
      raise InputError('an utterance of the example has no audio_path', item=record['utt_id'])
  return records


def bucket_indices(durations_s: np.ndarray, bucket_seconds: Sequence[int]) -> np.ndarray:
  """[N] int64 index into ``bucket_seconds`` of each clip's bucket, by :func:`perax.data.features.bucket_for`
  (the one bucket rule: a 2.00 s clip goes to the 4 s bucket; longer clips than the last go there)."""
  bucket_seconds = tuple(bucket_seconds)
  samples = np.ceil(np.asarray(durations_s, np.float64) * SAMPLE_RATE).astype(np.int64)
  index = {seconds: k for k, seconds in enumerate(bucket_seconds)}
  return np.asarray([index[features.bucket_for(int(n), bucket_seconds)] for n in samples], np.int64)


# ----------------------------------------------------------------------------------------------
# Batch plan.


class BucketBatches(grain.MapDataset):
  """Global batches of example indices, bucketed by audio length; element k is batch k.

  Element: ``{'bucket': int index into bucket_seconds, 'rows': [B_local] int64, 'fill': int}``:
  the rows of this process's slice of the global batch, -1 for padding, and the global batch's first
  (always real) row, which fills a slice made only of padding.  Every example is in exactly one batch
  per epoch; at most one batch per epoch has padding.
  """

  def __init__(
    self,
    buckets: np.ndarray,
    global_batch_size: int,
    seed: int | None,
    num_epochs: int | None,
    process_index: int = 0,
    process_count: int = 1,
  ):
    """Builds the plan.

    Args:
      buckets: [N] bucket index of each example.
      global_batch_size: rows per global batch (divisible by ``process_count``).
      seed: shuffles examples and batches per epoch; None keeps the order (sorted by bucket).
      num_epochs: epochs in the dataset; None repeats forever.
      process_index, process_count: which slice of every global batch this process takes.
    """
    super().__init__()
    if global_batch_size % process_count:
      raise ValueError(f'global batch {global_batch_size} is not divisible by {process_count} processes')
    self._buckets = np.asarray(buckets, np.int64)
    self._batch = global_batch_size
    self._seed = seed
    self._num_epochs = num_epochs
    self._local = global_batch_size // process_count
    self._offset = process_index * self._local
    self.batches_per_epoch = -(-len(self._buckets) // global_batch_size)
    self._last_plan = (None, None)

  def __len__(self) -> int:
    if self._num_epochs is None:
      return sys.maxsize
    return self.batches_per_epoch * self._num_epochs

  def epoch_plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """One epoch's (bucket [batches] int64, rows [batches, global_batch] int64); -1 = padding."""
    cached_epoch, plan = self._last_plan
    if cached_epoch != epoch:
      plan = self._plan(epoch)
      self._last_plan = (epoch, plan)
    return plan

  def _plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    rng = None if self._seed is None else np.random.default_rng([self._seed, epoch])
    order = np.arange(len(self._buckets)) if rng is None else rng.permutation(len(self._buckets))
    order = order[np.argsort(self._buckets[order], kind='stable')]
    batch_buckets, batch_rows, carried = [], [], np.zeros(0, np.int64)
    for bucket in np.unique(self._buckets):
      waiting = np.concatenate([carried, order[self._buckets[order] == bucket]])
      full = len(waiting) // self._batch * self._batch
      batch_rows.extend(waiting[:full].reshape(-1, self._batch))
      batch_buckets.extend([bucket] * (full // self._batch))
      carried = waiting[full:]
    if carried.size:
      batch_rows.append(np.concatenate([carried, np.full(self._batch - carried.size, -1)]))
      batch_buckets.append(self._buckets[carried].max())
    buckets, rows = np.asarray(batch_buckets, np.int64), np.stack(batch_rows)
    if rng is not None:
      shuffle = rng.permutation(len(rows))
      buckets, rows = buckets[shuffle], rows[shuffle]
    return buckets, rows

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    epoch, k = divmod(index, self.batches_per_epoch)
    buckets, rows = self.epoch_plan(epoch)
    return {
      'bucket': int(buckets[k]),
      'rows': rows[k, self._offset : self._offset + self._local],
      # The global batch's first row is always real (padding comes last): the example that fills a
      # process's slice made only of padding rows.
      'fill': int(rows[k, 0]),
    }

  def __str__(self) -> str:
    return f'BucketBatches(batch={self._batch}, seed={self._seed}, epochs={self._num_epochs})'
