"""DiME-Aug planning: which pairs of utterances to mix so that emotions (or emotion x ambiguity
cells) are balanced, and a balanced evaluation set from the test split alone.

Our design (field notes, section 2; the paper names DiME-Aug but its details were not available):

* A *cell* is (dominant emotion, ambiguity level): the argmax of the target distribution, and
  low | medium | high by the run's one level definition (perax.distributions.levels.LevelDefinition,
  usually the tertiles of the training split's human entropy, :func:`levels_from_split`). An original
  utterance's level is that of its human entropy (``entropy_human``; its target's entropy where the
  table has no human entropy), a mixed example's level that of its mixed target's normalised entropy.
* The *target histogram* is balanced over dominant emotions (``balance='classes'``; the ambiguity
  level of each added example is drawn from the split's own level shares) or over all cells
  (``balance='cells'``).  By default every class (cell) is brought up to the largest one; ``size``
  asks for that many examples in all instead (originals included), spread evenly.
* To add an example to cell (c, a): draw an anchor i of dominant emotion c with probability
  proportional to p_i[c], then up to ``max_tries`` partners j from the same split (for level low
  from the anchor's class, for high from the other classes, for medium from all); the first whose
  mixed target lands in (c, a) is taken (bounded rejection sampling).  When none lands,
  ``max_anchors`` anchors are tried, and then the nearest candidate is taken (a different dominant
  emotion counts more than any level difference) and marked ``fallback``.  A partner of the anchor's
  own class always exists as the last resort where the class has two utterances, and keeps the
  dominant emotion (a convex mix of two distributions with the same argmax has that argmax).
* concat: target = w p_i + (1 - w) p_j with w = dur_i / (dur_i + dur_j), audio = anchor, a uniform
  ``gap_s`` silence, loudness-matched partner.  mixup: w ~ Beta(alpha, alpha) is the anchor's share
  of both the overlaid audio and the target.  The mixed example lasts at most ``max_duration_s``.
* Everything is drawn from one ``numpy`` generator seeded by ``seed``: same inputs, same plan.

A plan is a table, one row per example (``utt_id`` is the new example's id; see
:data:`PLAN_COLUMNS`), with ``p_<label>`` targets (non-negative, summing to 1) and the provenance
(anchor, partner, weight, variant, gap).  :func:`perax.augment.audio_mix.render` turns a row into audio.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from perax import distributions as dist
from perax.augment.audio_mix import AUGMENTED, CONCAT, MIXUP, ORIGINAL, utterance_durations
from perax.core import jsonio, log
from perax.core.errors import InputError
from perax.data.tables import column, label_columns
from perax.distributions.levels import LEVELS, LevelDefinition, fit_levels

BALANCES = ('classes', 'cells')
VARIANTS = (CONCAT, MIXUP)
LOW, MEDIUM, HIGH = range(len(LEVELS))
# How far from 1 a target's sum may be before it is refused (it is renormalised otherwise).
_SUM_TOLERANCE = 1e-4
# A candidate's distance to the wanted cell: a wrong dominant emotion outweighs any level gap.
_WRONG_CLASS_DISTANCE = len(LEVELS)

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


@dataclasses.dataclass(frozen=True)
class MixConfig:
  """How pairs are drawn and mixed.

  Attributes:
    variant: 'concat' (anchor, gap, partner) or 'mixup' (overlay weighted by w ~ Beta).
    gap_s: (low, high) bounds of the uniform silence between concatenated utterances, seconds.
    mixup_alpha: alpha of the symmetric Beta distribution of the mixup weight.
    max_tries: partner candidates drawn per anchor.
    max_anchors: anchors tried per example before the nearest candidate is taken.
    max_duration_s: the longest example allowed (Whisper's encoder takes 30 s).
  """

  variant: str = CONCAT
  gap_s: tuple[float, float] = (0.05, 0.15)
  mixup_alpha: float = 0.4
  max_tries: int = 64
  max_anchors: int = 16
  max_duration_s: float = 30.0

  def __post_init__(self):
    if self.variant not in VARIANTS:
      raise ValueError(f'variant must be one of {VARIANTS}, got {self.variant!r}')
    if not 0.0 <= self.gap_s[0] <= self.gap_s[1]:
      raise ValueError(f'gap_s must be 0 <= low <= high, got {self.gap_s}')
    if self.mixup_alpha <= 0 or self.max_tries < 1 or self.max_anchors < 1:
      raise ValueError('mixup_alpha must be > 0, max_tries and max_anchors >= 1')


@dataclasses.dataclass(frozen=True)
class _Pool:
  """The utterances of one split that have a target, as arrays (N utterances, C labels)."""

  ids: np.ndarray  # [N] object
  p: np.ndarray  # [N, C] float64, rows non-negative and summing to 1
  duration: np.ndarray  # [N] float64 seconds
  transcript: np.ndarray  # [N] object, None where missing
  speaker: np.ndarray  # [N] object
  dominant: np.ndarray  # [N] int64 label index
  level: np.ndarray  # [N] int64 index into LEVELS
  split: str
  levels: LevelDefinition


def target_matrix(distributions: pa.Table, labels: Sequence[str]) -> np.ndarray:
  """[N, C] float64 targets from the ``p_<label>`` columns, checked and renormalised.

  Raises:
    InputError: a column is missing, or a row is negative, not finite or does not sum to 1 (naming
      the utt_id).
  """
  names = label_columns(labels)
  missing = [n for n in names if n not in distributions.column_names]
  if missing:
    raise InputError(f'distributions lack columns {missing}')
  p = np.stack([column(distributions, n).astype(np.float64) for n in names], axis=1)
  total = p.sum(axis=1)
  bad = ~np.isfinite(p).all(axis=1) | (p < 0).any(axis=1) | (np.abs(total - 1.0) > _SUM_TOLERANCE)
  if bad.any():
    k = int(np.flatnonzero(bad)[0])
    raise InputError(f'target {p[k].tolist()} is not a distribution', item=column(distributions, 'utt_id')[k])
  return p / total[:, None]


def level_index(p: np.ndarray, levels: LevelDefinition) -> np.ndarray:
  """[N] int64 ambiguity level (index into LEVELS) of distributions p [N, C], by their normalised entropy."""
  return levels.index(dist.normalized_entropy(p))


def human_entropy(distributions: pa.Table, labels: Sequence[str]) -> np.ndarray:
  """[N] normalised entropy that sets each row's level: ``entropy_human``, or the target's entropy
  where that is NaN or the table has no such column."""
  target = dist.normalized_entropy(target_matrix(distributions, labels))
  if 'entropy_human' not in distributions.column_names:
    return target
  human = column(distributions, 'entropy_human').astype(np.float64)
  return np.where(np.isnan(human), target, human)


def levels_from_split(
  utterances: pa.Table, distributions: pa.Table, labels: Sequence[str], split: str = 'train'
) -> LevelDefinition:
  """The run's level definition fitted here: tertiles of one split's human entropy
  (perax.distributions.levels.fit_levels; the targets' entropy where a table has no human entropy)."""
  in_split = set(column(utterances, 'utt_id')[column(utterances, 'split') == split])
  if not in_split:
    raise InputError(f'no utterances in split {split!r} to fit the ambiguity levels on')
  splits = np.asarray([split if u in in_split else None for u in column(distributions, 'utt_id')], object)
  if not (splits == split).any():
    raise InputError(f'no distributions for the utterances of split {split!r}')
  entropy = (
    column(distributions, 'entropy_human').astype(np.float64)
    if 'entropy_human' in distributions.column_names
    else dist.normalized_entropy(target_matrix(distributions, labels))
  )
  return fit_levels(entropy, splits, split=split)


def read_levels(path: str) -> LevelDefinition | None:
  """The level definition a JSON file holds: its ``levels`` record (a distributions.json), or the file
  itself when it is a LevelDefinition record (edges and source); None when it holds neither."""
  record = jsonio.read_json(path)
  if not isinstance(record, dict):
    raise InputError('expected a JSON object with a level definition', path=path)
  try:
    if isinstance(record.get('levels'), dict):
      return LevelDefinition.from_json(record['levels'])
    if 'edges' in record and 'source' in record:
      return LevelDefinition.from_json(record)
  except (KeyError, TypeError, ValueError) as error:
    raise InputError(f'not a level definition: {error}', path=path) from None
  return None


def _pool(
  utterances: pa.Table, distributions: pa.Table, labels: Sequence[str], levels: LevelDefinition, split: str
) -> _Pool:
  """The split's utterances joined with their targets; those without one are left out (logged)."""
  utts = utterances.filter(pa.array(column(utterances, 'split') == split))
  if utts.num_rows == 0:
    raise InputError(f'no utterances in split {split!r}')
  p_all = target_matrix(distributions, labels)
  row_of = {u: k for k, u in enumerate(column(distributions, 'utt_id'))}
  ids = column(utts, 'utt_id')
  has_target = np.asarray([u in row_of for u in ids], bool)
  if not has_target.all():
    log.warning(
      f'{int((~has_target).sum())} of {len(ids)} utterances of split {split!r} have no target '
      'distribution and are left out',
      stage='DiME-Aug',
    )
  utts = utts.filter(pa.array(has_target))
  ids = column(utts, 'utt_id')
  if len(ids) < 2:
    raise InputError(f'split {split!r} has {len(ids)} utterances with targets; DiME-Aug needs 2')
  rows = [row_of[u] for u in ids]
  p = p_all[rows]
  entropy = human_entropy(distributions, labels)[rows]
  return _Pool(
    ids=ids,
    p=p,
    duration=utterance_durations(utts),
    transcript=column(utts, 'transcript'),
    speaker=column(utts, 'speaker'),
    dominant=dist.majority(p),
    level=levels.index(entropy),
    split=split,
    levels=levels,
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


@dataclasses.dataclass(frozen=True)
class _Pair:
  anchor: int
  partner: int
  weight: float
  gap_s: float
  duration_s: float
  target: np.ndarray  # [C]
  label: int
  level: int
  fallback: bool


class _Sampler:
  """Draws anchor-partner pairs for wanted cells from one pool."""

  def __init__(self, pool: _Pool, config: MixConfig, rng: np.random.Generator):
    self.pool = pool
    self.config = config
    self.rng = rng
    num_labels = pool.p.shape[1]
    self.by_class = [np.flatnonzero(pool.dominant == c) for c in range(num_labels)]
    self.others = [np.flatnonzero(pool.dominant != c) for c in range(num_labels)]
    self.everyone = np.arange(len(pool.ids))

  def _candidates(self, anchor: int, wanted_class: int, wanted_level: int) -> np.ndarray:
    """[max_tries] partner indices from the proposal pool of the wanted level."""
    if wanted_level == LOW:
      proposal = self.by_class[wanted_class]
    elif wanted_level == HIGH:
      proposal = self.others[wanted_class]
    else:
      proposal = self.everyone
    if proposal.size == 0 or (proposal.size == 1 and proposal[0] == anchor):
      proposal = self.everyone
    partners = proposal[self.rng.integers(0, proposal.size, self.config.max_tries)]
    same_class = self.by_class[wanted_class]
    same_class = same_class[same_class != anchor]
    if same_class.size:  # The last resort keeps the dominant emotion.
      partners = np.append(partners, same_class[self.rng.integers(0, same_class.size)])
    return partners

  def _mix(self, anchor: int, partners: np.ndarray):
    """Weights, gaps and durations [K] of mixing the anchor with each candidate partner."""
    pool, config, k = self.pool, self.config, partners.size
    if config.variant == CONCAT:
      gaps = self.rng.uniform(config.gap_s[0], config.gap_s[1], k)
      weights = pool.duration[anchor] / (pool.duration[anchor] + pool.duration[partners])
      durations = pool.duration[anchor] + gaps + pool.duration[partners]
    else:
      gaps = np.full(k, np.nan)
      weights = self.rng.beta(config.mixup_alpha, config.mixup_alpha, k)
      durations = np.maximum(pool.duration[anchor], pool.duration[partners])
    return weights, gaps, durations

  def draw(self, wanted_class: int, wanted_level: int) -> _Pair:
    """One pair whose mixed target lands in the wanted cell, or the nearest found (fallback)."""
    pool = self.pool
    anchors = self.by_class[wanted_class]
    anchor_prob = pool.p[anchors, wanted_class] / pool.p[anchors, wanted_class].sum()
    best, best_distance = None, np.inf
    for _ in range(self.config.max_anchors):
      anchor = int(anchors[self.rng.choice(anchors.size, p=anchor_prob)])
      partners = self._candidates(anchor, wanted_class, wanted_level)
      weights, gaps, durations = self._mix(anchor, partners)
      targets = weights[:, None] * pool.p[anchor] + (1.0 - weights[:, None]) * pool.p[partners]
      labels = dist.majority(targets)
      levels = level_index(targets, pool.levels)
      distance = (_WRONG_CLASS_DISTANCE * (labels != wanted_class) + np.abs(levels - wanted_level)).astype(
        np.float64
      )
      distance[(partners == anchor) | (durations > self.config.max_duration_s)] = np.inf
      k = int(np.argmin(distance))
      if distance[k] < best_distance:
        best_distance = distance[k]
        best = _Pair(
          anchor,
          int(partners[k]),
          float(weights[k]),
          float(gaps[k]),
          float(durations[k]),
          targets[k],
          int(labels[k]),
          int(levels[k]),
          fallback=bool(distance[k] > 0),
        )
      if best_distance == 0:
        break
    if best is None:
      raise InputError(
        f'no partner within max_duration_s={self.config.max_duration_s} for '
        f'anchors of label index {wanted_class} in split {pool.split!r}'
      )
    return best


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
  config: MixConfig = MixConfig(),
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


def speaker_leaks(utterances: pa.Table, split: str) -> set[str]:
  """Speakers of ``split`` who also speak in another split (null speakers are ignored)."""
  speakers = column(utterances, 'speaker')
  in_split = column(utterances, 'split') == split
  inside = {s for s in speakers[in_split] if s is not None}
  outside = {s for s in speakers[~in_split] if s is not None}
  return inside & outside


def build_eval_set(
  utterances: pa.Table,
  distributions: pa.Table,
  labels: Sequence[str],
  levels: LevelDefinition,
  split: str = 'test',
  balance: str = 'classes',
  size: int | None = None,
  seed: int = 0,
  config: MixConfig = MixConfig(),
  allow_speaker_overlap: bool = False,
) -> pa.Table:
  """A balanced evaluation set from one (test) split alone: originals first, DiME-Aug fills gaps.

  Each class (cell) gets its target count: up to that many of its originals (a random subset where
  it has more), then augmented examples whose anchor and partner both come from the same split, so
  the set holds no utterance and no speaker of any other split.

  Args:
    utterances, distributions, labels, levels, balance, size, seed, config: as for
      :func:`plan_augmentation`.
    split: the evaluation split.
    allow_speaker_overlap: accept a corpus whose evaluation speakers also speak in other splits.

  Returns:
    A plan table (PLAN_COLUMNS then ``p_<label>``): origin 'original' rows, then 'augmented' rows.

  Raises:
    InputError: speakers of ``split`` appear in other splits (unless allowed).
  """
  labels = list(labels)
  leaks = speaker_leaks(utterances, split)
  if leaks and not allow_speaker_overlap:
    raise InputError(
      f'{len(leaks)} speakers of split {split!r} also speak in other splits '
      f'(e.g. {sorted(leaks)[:3]}); an unbiased evaluation set needs a '
      f'speaker-independent split'
    )
  pool = _pool(utterances, distributions, labels, levels, split)
  rng = np.random.default_rng(seed)
  wanted_class, wanted_level, quota = _wanted_cells(pool, len(labels), balance, size, rng)
  group = _groups(pool, balance)
  kept = []
  for g in np.unique(group):
    kept.extend(rng.permutation(np.flatnonzero(group == g))[: quota[g]].tolist())
  originals = [_original_row(pool, labels, i) for i in sorted(kept)]
  augmented = _augmented_rows(pool, labels, wanted_class, wanted_level, config, seed, rng)
  return _plan_table(pool, labels, originals + augmented)


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
