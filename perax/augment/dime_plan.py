"""DiME-Aug training-set planning: which examples to add so that emotions (or emotion x ambiguity
cells) of one split are balanced, and the plan table that records them.

* The *target histogram* is balanced over dominant emotions (``balance='classes'``; the ambiguity
  level of each added example is drawn from the split's own level shares) or over all cells
  (``balance='cells'``).  By default every class (cell) is brought up to the largest one; ``size``
  asks for that many examples in all instead (originals included), spread evenly.
* Each added example is one pair drawn for its wanted cell (:mod:`perax.augment.dime_mixing`).
* Everything is drawn from one ``numpy`` generator seeded by ``seed``: same inputs, same plan.

A plan is a table, one row per example (``utt_id`` is the new example's id; see
:data:`PLAN_COLUMNS`), with ``p_<label>`` targets (non-negative, summing to 1) and the provenance
(anchor, partner, weight, variant, gap).  :func:`perax.augment.audio_mix.render` turns a row into audio.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from perax.augment.audio_mix import AUGMENTED, ORIGINAL
from perax.augment.dime_mixing import MixConfig, _Sampler
from perax.augment.dime_targets import _Pool, _pool
from perax.core import log
from perax.core.errors import InputError
from perax.data.tables import column, label_columns
from perax.distributions.levels import LEVELS, LevelDefinition

BALANCES = ('classes', 'cells')

PLAN_COLUMNS = (
  'utt_id',  # the example's id: the original's own, or a new one when augmented
  'origin',  # original | augmented
  'anchor_id',  # the anchor utterance (the utterance itself for originals)
  'partner_id',  # the partner utterance; null for originals
  'weight',  # the anchor's share of the target (1 for originals)
  'variant',  # concat | mixup; null for originals
  'gap_s',  # silence between anchor and partner (concat); NaN otherwise
  'duration_s',  # the example's duration
  'transcript',  # anchor's + ' ' + partner's; null where either has none
  'speaker',  # the anchor's speaker, or 'anchor+partner' where they differ
  'split',
  'wanted_label',  # the cell the example was drawn for; null for originals
  'wanted_level',
  'label',  # the cell the target landed in: its dominant emotion ...
  'level',  # ... and its ambiguity level
  'fallback',  # no candidate landed in the wanted cell; the nearest was taken
)


def _even_targets(total: int, n: int) -> np.ndarray:
  """[n] int: ``total`` spread as evenly as possible, the remainder to the first entries."""
  return total // n + (np.arange(n) < total % n)


def _groups(pool: _Pool, balance: str) -> np.ndarray:
  """[N] int64 balancing group of each utterance: its class, or its cell (class * 3 + level)."""
  if balance == 'classes':
    return pool.dominant
  if balance == 'cells':
    return pool.dominant * len(LEVELS) + pool.level
  raise ValueError(f'balance must be one of {BALANCES}, got {balance!r}')


def _wanted_cells(
  pool: _Pool, num_labels: int, balance: str, size: int | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The quota of every balancing group, and the cells of the examples missing to reach it.

  Returns:
    (wanted_class [M] int64, wanted_level [M] int64, quota [G] int64): one entry per example to add;
    quota = examples wanted per group (G = C classes, or C * 3 cells), originals included.  Classes
    without any utterance cannot be anchored and get quota 0.
  """
  groups_per_class = 1 if balance == 'classes' else len(LEVELS)
  counts = np.bincount(_groups(pool, balance), minlength=num_labels * groups_per_class)
  present = np.repeat(np.bincount(pool.dominant, minlength=num_labels) > 0, groups_per_class)
  if not present.all():
    absent = num_labels - int(present.sum()) // groups_per_class
    log.warning(
      f'split {pool.split!r} has no utterance dominated by {absent} of the {num_labels} labels; '
      'they are not balanced',
      stage='DiME-Aug',
    )
  quota = np.zeros_like(counts)
  quota[present] = counts.max() if size is None else _even_targets(size, int(present.sum()))
  deficit = np.maximum(quota - counts, 0)
  if balance == 'classes':
    wanted_class = np.repeat(np.arange(num_labels), deficit)
    shares = np.bincount(pool.level, minlength=len(LEVELS)) / len(pool.level)
    wanted_level = rng.choice(len(LEVELS), size=wanted_class.size, p=shares)
  else:
    cells = np.repeat(np.arange(counts.size), deficit)
    wanted_class, wanted_level = np.divmod(cells, len(LEVELS))
  return wanted_class.astype(np.int64), wanted_level.astype(np.int64), quota


def _join_transcripts(first: str | None, second: str | None) -> str | None:
  return None if first is None or second is None else f'{first} {second}'


def _plan_table(pool: _Pool, labels: Sequence[str], rows: list[dict]) -> pa.Table:
  """The plan rows as a table with PLAN_COLUMNS then the ``p_<label>`` targets."""
  schema = pa.schema(
    [
      ('utt_id', pa.string()),
      ('origin', pa.string()),
      ('anchor_id', pa.string()),
      ('partner_id', pa.string()),
      ('weight', pa.float64()),
      ('variant', pa.string()),
      ('gap_s', pa.float64()),
      ('duration_s', pa.float64()),
      ('transcript', pa.string()),
      ('speaker', pa.string()),
      ('split', pa.string()),
      ('wanted_label', pa.string()),
      ('wanted_level', pa.string()),
      ('label', pa.string()),
      ('level', pa.string()),
      ('fallback', pa.bool_()),
    ]
    + [(name, pa.float64()) for name in label_columns(labels)]
  )
  columns = {name: [r[name] for r in rows] for name in PLAN_COLUMNS}
  targets = np.asarray([r['target'] for r in rows], np.float64).reshape(len(rows), len(labels))
  for k, name in enumerate(label_columns(labels)):
    columns[name] = targets[:, k]
  return pa.table(columns, schema=schema)


def _original_row(pool: _Pool, labels: Sequence[str], i: int) -> dict:
  return dict(
    utt_id=pool.ids[i],
    origin=ORIGINAL,
    anchor_id=pool.ids[i],
    partner_id=None,
    weight=1.0,
    variant=None,
    gap_s=np.nan,
    duration_s=pool.duration[i],
    transcript=pool.transcript[i],
    speaker=pool.speaker[i],
    split=pool.split,
    wanted_label=None,
    wanted_level=None,
    label=labels[pool.dominant[i]],
    level=LEVELS[pool.level[i]],
    fallback=False,
    target=pool.p[i],
  )


def _augmented_rows(
  pool: _Pool,
  labels: Sequence[str],
  wanted_class: np.ndarray,
  wanted_level: np.ndarray,
  config: MixConfig,
  seed: int,
  rng: np.random.Generator,
) -> list[dict]:
  sampler = _Sampler(pool, config, rng)
  taken = set(pool.ids)
  rows = []
  for n, (c, a) in enumerate(zip(wanted_class, wanted_level)):
    pair = sampler.draw(int(c), int(a))
    utt_id = f'dimeaug_{pool.split}_s{seed}_{n:06d}'
    if utt_id in taken:
      raise InputError('a DiME-Aug id collides with an utterance id', item=utt_id)
    i, j = pair.anchor, pair.partner
    speaker = (
      pool.speaker[i] if pool.speaker[i] == pool.speaker[j] else f'{pool.speaker[i]}+{pool.speaker[j]}'
    )
    rows.append(
      dict(
        utt_id=utt_id,
        origin=AUGMENTED,
        anchor_id=pool.ids[i],
        partner_id=pool.ids[j],
        weight=pair.weight,
        variant=config.variant,
        gap_s=pair.gap_s,
        duration_s=pair.duration_s,
        transcript=_join_transcripts(pool.transcript[i], pool.transcript[j]),
        speaker=speaker,
        split=pool.split,
        wanted_label=labels[c],
        wanted_level=LEVELS[a],
        label=labels[pair.label],
        level=LEVELS[pair.level],
        fallback=pair.fallback,
        target=pair.target,
      )
    )
  return rows


def plan_augmentation(
  utterances: pa.Table,
  distributions: pa.Table,
  labels: Sequence[str],
  levels: LevelDefinition,
  split: str = 'train',
  balance: str = 'classes',
  size: int | None = None,
  seed: int = 0,
  config: MixConfig = MixConfig(),  # noqa: B008 (a frozen dataclass: immutable)
) -> pa.Table:
  """The augmented examples that balance one split (originals are not in the plan).

  Args:
    utterances: utterances table (perax.data.tables); only rows of ``split`` are used, and only those
      with a row in ``distributions``.
    distributions: utt_id and ``p_<label>`` for every label of ``labels``.
    labels: the label set's labels, in column order.
    levels: the run's ambiguity level definition.
    split: the split to balance; anchors and partners both come from it.
    balance: 'classes' or 'cells'.
    size: examples wanted in all, originals included; None brings every class (cell) up to the
      largest.  Originals are never dropped, so a class above its share stays above it.
    seed: seeds every random choice.
    config: how pairs are drawn and mixed.

  Returns:
    The plan: PLAN_COLUMNS then ``p_<label>`` per label; origin is 'augmented' in every row.
  """
  labels = list(labels)
  pool = _pool(utterances, distributions, labels, levels, split)
  rng = np.random.default_rng(seed)
  wanted_class, wanted_level, _ = _wanted_cells(pool, len(labels), balance, size, rng)
  return _plan_table(
    pool, labels, _augmented_rows(pool, labels, wanted_class, wanted_level, config, seed, rng)
  )


def original_rows(
  utterances: pa.Table, distributions: pa.Table, labels: Sequence[str], levels: LevelDefinition, split: str
) -> pa.Table:
  """Every utterance of ``split`` that has a target, as plan rows of origin 'original'."""
  labels = list(labels)
  pool = _pool(utterances, distributions, labels, levels, split)
  return _plan_table(pool, labels, [_original_row(pool, labels, i) for i in range(len(pool.ids))])


def plan_summary(plan: pa.Table, levels: LevelDefinition) -> str:
  """A text table of a plan: examples per dominant emotion and level, originals and augmented."""
  origin, label, level = (column(plan, name) for name in ('origin', 'label', 'level'))
  labels = [name[2:] for name in plan.column_names if name.startswith('p_')]
  head = (
    f'DiME-Aug: {int((origin == ORIGINAL).sum())} original + '
    f'{int((origin == AUGMENTED).sum())} augmented examples, '
    f'{int(column(plan, "fallback").sum())} fallbacks to the nearest cell; '
    f'ambiguity levels: {levels.describe()}'
  )
  width = max(len(name) for name in labels + ['label'])
  lines = [
    head,
    f'{"label":<{width}} '
    + ' '.join(f'{f"{o[:4]}/{lv}":>12}' for o in (ORIGINAL, AUGMENTED) for lv in LEVELS)
    + f' {"total":>7}',
  ]
  for name in labels:
    counts = [
      int(((origin == o) & (label == name) & (level == lv)).sum())
      for o in (ORIGINAL, AUGMENTED)
      for lv in LEVELS
    ]
    lines.append(f'{name:<{width}} ' + ' '.join(f'{c:>12}' for c in counts) + f' {sum(counts):>7}')
  return '\n'.join(lines)
