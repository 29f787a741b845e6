"""Builds emotion distributions from votes (and proxy scores): writes distributions.parquet.

  python launch/distributions.py --votes=runs/demo/votes.parquet \
      --utterances=runs/demo/utterances.parquet --label_set=demo --out_dir=runs/demo

Human and synthetic votes are told apart by the votes' ``source`` column. Writes
<out_dir>/distributions.parquet and <out_dir>/distributions.json (the level definition, kappa and
what it was fitted on, counts, targets without human votes, skipped votes) and prints a summary. The work is perax.distributions.build_distributions.
"""

from absl import app, flags

from perax import distributions
from perax.core import cli
from perax.data import tables

_VOTES = flags.DEFINE_string(
  'votes', None, 'Votes tables, comma-separated (.parquet, .csv, .jsonl).', required=True
)
_SCORES = flags.DEFINE_string(
  'scores',
  None,
  'Proxy score tables (utt_id, prompt_id, p_<label>), '
  'comma-separated; averaged over prompts as the synthetic evidence.',
)
_UTTERANCES = flags.DEFINE_string('utterances', None, 'Utterances table: row order and splits.')
_LABEL_SET = flags.DEFINE_string('label_set', 'iemocap4', 'Label set name or comma-separated labels.')
_COMBINE = flags.DEFINE_enum(
  'combine', 'none', distributions.COMBINE_MODES, 'How human and synthetic evidence are combined.'
)
_SYNTHETIC_WEIGHT = flags.DEFINE_float(
  'synthetic_weight', 1.0, 'Weight of one synthetic vote (combine=pooled).'
)
_MIXTURE_LAMBDA = flags.DEFINE_float(
  'mixture_lambda', 0.5, 'Weight of the human distribution (combine=mixture).'
)
_KAPPA = flags.DEFINE_float(
  'kappa',
  None,
  'Dirichlet prior strength (combine=dirichlet); default: fitted by held-out likelihood of the human votes.',
)
_SMOOTHING = flags.DEFINE_float('smoothing', 0.0, 'Additive smoothing of the human counts.')
_LEVELS_FROM = flags.DEFINE_string(
  'levels_from', 'train', "Split whose human-entropy tertiles set the ambiguity edges, or 'all'."
)
_LEVEL_EDGES = flags.DEFINE_list('level_edges', None, "Fixed entropy edges 'e1,e2' instead of tertiles.")
_LEVEL_DEFINITION = flags.DEFINE_string(
  'level_definition',
  None,
  "Another run's distributions.json (or its directory): apply its ambiguity level definition as it "
  'is instead of fitting one (excludes --level_edges).',
)
_TIES = flags.DEFINE_enum(
  'majority_ties',
  'random',
  distributions.TIE_POLICIES,
  'How ties between top labels set the majority column.',
)
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of random tie breaking.')
_COMPONENTS = flags.DEFINE_bool(
  'components', False, 'Also write ph_<label> (human) and ps_<label> (synthetic) columns.'
)
_OUT_DIR = flags.DEFINE_string('out_dir', None, 'Output directory.', required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if _LEVEL_EDGES.value is not None and len(_LEVEL_EDGES.value) != 2:
    raise app.UsageError(f'--level_edges needs two numbers, got {_LEVEL_EDGES.value}')
  if _LEVEL_EDGES.value is not None and _LEVEL_DEFINITION.value:
    raise app.UsageError('give --level_edges or --level_definition, not both')
  scores = None
  if _SCORES.value:
    scores = tables.concat([tables.read_table(path) for path in _SCORES.value.split(',') if path])
  table, info = distributions.build_distributions(
    tables.read_votes(_VOTES.value),
    synthetic_scores=scores,
    label_set=_LABEL_SET.value,
    combine=_COMBINE.value,
    synthetic_weight=_SYNTHETIC_WEIGHT.value,
    mixture_lambda=_MIXTURE_LAMBDA.value,
    kappa=_KAPPA.value,
    smoothing=_SMOOTHING.value,
    utterances=tables.read_utterances(_UTTERANCES.value) if _UTTERANCES.value else None,
    levels_from_split=_LEVELS_FROM.value,
    fixed_edges=tuple(map(float, _LEVEL_EDGES.value)) if _LEVEL_EDGES.value else None,
    level_definition=(
      distributions.read_level_definition(_LEVEL_DEFINITION.value) if _LEVEL_DEFINITION.value else None
    ),
    tie_policy=_TIES.value,
    seed=_SEED.value,
    keep_components=_COMPONENTS.value,
  )
  paths = distributions.write_distributions(table, info, _OUT_DIR.value)
  print(distributions.format_summary(info))
  print(f'wrote {" and ".join(paths)}')


if __name__ == '__main__':
  cli.run(main)
