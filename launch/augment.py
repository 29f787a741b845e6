"""DiME-Aug: writes a class- (or cell-) balanced set of one split, or a balanced evaluation set.

  python launch/augment.py --manifest=out/utterances.parquet \
      --distributions=out/distributions.parquet --split=train --out_dir=out/dime_aug
  python launch/augment.py ... --eval_set --split=test --out_dir=out/eval_balanced

Writes <out_dir>/wav/*.wav (augmented examples, 16 kHz), utterances.parquet (originals + augmented,
with provenance columns), distributions.parquet (p_<label> targets) and plan.parquet (the plan).
"""

import os

from absl import app
from absl import flags

from perax import augmented_set
from perax import dime_aug
from perax.tables import concat, labels_from_columns, read_table, read_utterances, write_table

_MANIFEST = flags.DEFINE_string('manifest', None, 'utterances.parquet of the corpus.',
                                required=True)
_DISTRIBUTIONS = flags.DEFINE_string('distributions', None,
                                     'distributions.parquet (utt_id, p_<label> targets).',
                                     required=True)
_SPLIT = flags.DEFINE_string('split', 'train', 'The split to balance (anchors and partners).')
_BALANCE = flags.DEFINE_enum('balance', 'classes', dime_aug.BALANCES,
                             'Balance dominant emotions, or emotion x ambiguity cells.')
_SIZE = flags.DEFINE_integer('size', None, 'Examples wanted in all (originals included); default: '
                             'every class (cell) up to the largest.')
_VARIANT = flags.DEFINE_enum('variant', dime_aug.CONCAT, dime_aug.VARIANTS,
                             'concat (anchor, gap, partner) or mixup (overlay).')
_MIXUP_ALPHA = flags.DEFINE_float('mixup_alpha', dime_aug.MixConfig.mixup_alpha,
                                  'Beta(alpha, alpha) of the mixup weight.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seeds every random choice.')
_EDGES = flags.DEFINE_list('edges', None, 'Ambiguity edges e1,e2 of the normalised entropy; '
                           'default: tertiles of the --edges_split targets.')
_EDGES_SPLIT = flags.DEFINE_string('edges_split', 'train', 'Split whose tertiles give the edges.')
_EVAL_SET = flags.DEFINE_bool('eval_set', False, 'Build the balanced evaluation set of --split '
                              '(originals first, augmented fill deficits; no speaker leaks).')
_OUT_DIR = flags.DEFINE_string('out_dir', None, 'Output directory.', required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  utterances = read_utterances(_MANIFEST.value)
  distributions = read_table(_DISTRIBUTIONS.value)
  labels = labels_from_columns(distributions.column_names)
  edges = (tuple(float(e) for e in _EDGES.value) if _EDGES.value else
           dime_aug.edges_from_split(utterances, distributions, labels, _EDGES_SPLIT.value))
  config = dime_aug.MixConfig(variant=_VARIANT.value, mixup_alpha=_MIXUP_ALPHA.value)
  options = dict(split=_SPLIT.value, balance=_BALANCE.value, size=_SIZE.value, seed=_SEED.value,
                 config=config)
  if _EVAL_SET.value:
    plan = dime_aug.build_eval_set(utterances, distributions, labels, edges, **options)
  else:
    plan = concat([dime_aug.original_rows(utterances, distributions, labels, edges, _SPLIT.value),
                   dime_aug.plan_augmentation(utterances, distributions, labels, edges, **options)])
  print(dime_aug.plan_summary(plan, edges))
  write_table(plan, os.path.join(_OUT_DIR.value, 'plan.parquet'))
  paths = augmented_set.write_augmented_set(plan, utterances, distributions, labels, edges,
                                            _OUT_DIR.value)
  print('wrote', ', '.join(paths))


if __name__ == '__main__':
  app.run(main)
