"""DiME-Aug: writes a class- (or cell-) balanced set of one split, or a balanced evaluation set.

  python launch/augment.py --manifest=out/utterances.parquet \
      --distributions=out/distributions.parquet --split=train --out_dir=out/dime_aug
  python launch/augment.py ... --eval_set --split=test --out_dir=out/eval_balanced

Writes <out_dir>/wav/*.wav (augmented examples, 16 kHz), utterances.parquet (originals + augmented,
with provenance columns), distributions.parquet (p_<label> targets) and plan.parquet (the plan).
"""

from absl import app, flags

from perax.augment import augmented_set, dime_aug
from perax.core import cli
from perax.core.errors import InputError
from perax.data.tables import read_table, read_utterances
from perax.distributions.levels import LevelDefinition

_MANIFEST = flags.DEFINE_string('manifest', None, 'utterances.parquet of the corpus.', required=True)
_DISTRIBUTIONS = flags.DEFINE_string(
  'distributions', None, 'distributions.parquet (utt_id, p_<label> targets).', required=True
)
_SPLIT = flags.DEFINE_string('split', 'train', 'The split to balance (anchors and partners).')
_BALANCE = flags.DEFINE_enum(
  'balance', 'classes', dime_aug.BALANCES, 'Balance dominant emotions, or emotion x ambiguity cells.'
)
_SIZE = flags.DEFINE_integer(
  'size', None, 'Examples wanted in all (originals included); default: every class (cell) up to the largest.'
)
_VARIANT = flags.DEFINE_enum(
  'variant', dime_aug.CONCAT, dime_aug.VARIANTS, 'concat (anchor, gap, partner) or mixup (overlay).'
)
_MIXUP_ALPHA = flags.DEFINE_float(
  'mixup_alpha', dime_aug.MixConfig.mixup_alpha, 'Beta(alpha, alpha) of the mixup weight.'
)
_SEED = flags.DEFINE_integer('seed', 0, 'Seeds every random choice.')
_EDGES = flags.DEFINE_list(
  'edges',
  None,
  'Fixed ambiguity edges e1,e2 of the normalised human entropy; default: --levels, else tertiles of '
  "the --levels_split's human entropy.",
)
_LEVELS = flags.DEFINE_string(
  'levels',
  None,
  "The run's level definition: a distributions.json with a 'levels' record, or a LevelDefinition JSON.",
)
_LEVELS_SPLIT = flags.DEFINE_string(
  'levels_split', 'train', 'Split whose human-entropy tertiles define the levels (without --edges/--levels).'
)
_PROXY_ONLY = flags.DEFINE_bool(
  'proxy_only_targets', False, 'Keep utterances without human votes (proxy-only targets).'
)
_EVAL_SET = flags.DEFINE_bool(
  'eval_set',
  False,
  'Build the balanced evaluation set of --split '
  '(originals first, augmented fill deficits; no speaker leaks).',
)
_OUT_DIR = flags.DEFINE_string('out_dir', None, 'Output directory.', required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  levels = None
  if _EDGES.value:
    try:
      levels = LevelDefinition(edges=tuple(float(e) for e in _EDGES.value))
    except ValueError as error:
      raise InputError(f'--edges: {error}') from None
  elif _LEVELS.value:
    levels = dime_aug.read_levels(_LEVELS.value)
    if levels is None:
      raise InputError('holds no level definition', path=_LEVELS.value)
  paths = augmented_set.augment(
    read_utterances(_MANIFEST.value),
    read_table(_DISTRIBUTIONS.value),
    _OUT_DIR.value,
    split=_SPLIT.value,
    balance=_BALANCE.value,
    size=_SIZE.value,
    seed=_SEED.value,
    config=dime_aug.MixConfig(variant=_VARIANT.value, mixup_alpha=_MIXUP_ALPHA.value),
    levels=levels,
    levels_split=_LEVELS_SPLIT.value,
    eval_set=_EVAL_SET.value,
    proxy_only_targets=_PROXY_ONLY.value,
  )
  print('wrote', ', '.join(paths.values()))


if __name__ == '__main__':
  cli.run(main)
