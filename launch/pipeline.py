"""The main job: the whole system end to end, writing report.html and report.md.

  python launch/pipeline.py                       # the embedded demo corpus, a tiny random model
  python launch/pipeline.py --corpus=iemocap --corpus_path=/data/IEMOCAP_full_release \
      --checkpoint=/ckpt/Qwen2-Audio-7B-Instruct-perax --train_config=configs/iemocap.py \
      --dtype=bfloat16 --folds=all --out_dir=runs/iemocap
  python launch/pipeline.py --corpus=msp_podcast --corpus_path=/data/MSP-Podcast \
      --checkpoint=/ckpt/Qwen2-Audio-7B-Instruct-perax --train_config=configs/msp_podcast.py \
      --dtype=bfloat16 --test_splits=Test1,Test2 --out_dir=runs/msp

Stages (prepare, checkpoint, proxies, distributions, augment, train, evaluate, analyze, report) each
record the settings and inputs they used; rerunning a command reuses every stage whose inputs are
unchanged and reruns the rest (and what depends on them), so rerunning the same command resumes.
Defaults are the stage launchers' own (perax.pipeline.config). See perax/pipeline/run.py for the layout.
"""

from absl import app, flags

from perax import pipeline
from perax.core import cli
from perax.core.errors import InputError
from perax.data import corpora
from perax.pipeline import config as config_lib
from perax.pipeline import run as run_lib

_DEFAULTS = pipeline.PipelineConfig()
_POOLS = ['voice', 'face', 'audiovisual']

_OUT_DIR = flags.DEFINE_string('out_dir', _DEFAULTS.out_dir, 'Where everything goes; reruns resume.')
_CORPUS = flags.DEFINE_enum('corpus', _DEFAULTS.corpus, corpora.CORPORA, 'The corpus.')
_CORPUS_PATH = flags.DEFINE_string('corpus_path', None, 'The corpus directory (demo: generated).')
_LENIENT = flags.DEFINE_bool('lenient', False, 'Skip and count malformed corpus input instead of failing.')
_LABEL_SET = flags.DEFINE_string(
  'label_set',
  None,
  'Label set name or comma-separated labels. Default: the corpus natural set ('
  + ', '.join(f'{c} -> {s}' for c, s in config_lib.NATURAL_LABEL_SETS.items())
  + '); required for a manifest corpus.',
)
_IEMOCAP_TEST = flags.DEFINE_integer(
  'iemocap_test_session', None, 'IEMOCAP session used as the test split (default: the loader default, 5).'
)
_IEMOCAP_SELF = flags.DEFINE_bool(
  'iemocap_self_evaluations', None, "Count the IEMOCAP actors' self-evaluations as votes."
)
_IEMOCAP_PROTOCOL = flags.DEFINE_enum(
  'iemocap_protocol',
  None,
  ['4class', 'any_in_set', 'full'],
  'IEMOCAP protocol (default 4class: neu, hap+exc, sad, ang; see launch/prepare.py --help).',
)
_MSP_PROTOCOL = flags.DEFINE_enum('msp_protocol', None, ['8class'], 'MSP-Podcast protocol (default 8class).')
_MSP_X = flags.DEFINE_enum(
  'msp_emo_class_x',
  None,
  ['drop', 'keep'],
  'MSP-Podcast EmoClass X (no agreement) utterances (default drop).',
)
_MSP_O = flags.DEFINE_enum(
  'msp_emo_class_o', None, ['drop', 'keep'], 'MSP-Podcast EmoClass O (other) utterances (default drop).'
)
_OUTSIDE_VOTES = flags.DEFINE_enum(
  'outside_votes',
  None,
  ['drop', 'other'],
  "IEMOCAP / MSP-Podcast votes outside the protocol's classes: drop (default) or an explicit 'other' class.",
)
_CREMA_MODALITY = flags.DEFINE_enum(
  'crema_modality', None, _POOLS, 'CREMA-D rater pool of the human votes (default: voice).'
)
_CREMA_REFERENCE = flags.DEFINE_enum(
  'crema_reference_modality', None, _POOLS, 'CREMA-D rater pool written as the dense reference.'
)
_MANIFEST_VOTES = flags.DEFINE_string(
  'manifest_votes', None, 'Votes table(s) of a manifest corpus, comma-separated.'
)
_CHECKPOINT = flags.DEFINE_string(
  'checkpoint', None, 'HF or converted Qwen2-Audio directory; default: a tiny random one (demo).'
)
_DTYPE = flags.DEFINE_enum(
  'dtype', _DEFAULTS.dtype, ['float32', 'bfloat16'], 'Compute dtype of proxy generation.'
)
_PROMPTS = flags.DEFINE_string('prompts_config', None, "Prompts JSON (default: perax's default prompts).")
_PROMPT_IDS = flags.DEFINE_list('prompt_ids', None, 'Prompt ids of the prompts file to use.')
_VOTES = flags.DEFINE_integer(
  'votes_per_utterance', _DEFAULTS.votes_per_utterance, 'Sampled proxy votes per utterance and prompt.'
)
_TEMPERATURE = flags.DEFINE_float('temperature', _DEFAULTS.temperature, 'Sampling temperature; 0 = greedy.')
_TOP_K = flags.DEFINE_integer('top_k', _DEFAULTS.top_k, 'Top-k sampling; 0 = off.')
_TOP_P = flags.DEFINE_float('top_p', _DEFAULTS.top_p, 'Nucleus sampling mass; 1 = off.')
_MAX_NEW_TOKENS = flags.DEFINE_integer(
  'max_new_tokens', _DEFAULTS.max_new_tokens, 'Tokens generated at most per vote.'
)
_BATCH = flags.DEFINE_integer('batch_size', _DEFAULTS.batch_size, 'Clips per proxy batch.')
_COMBINE = flags.DEFINE_enum(
  'combine',
  _DEFAULTS.combine,
  ['none', 'pooled', 'mixture', 'dirichlet'],
  'How human votes and proxy scores make the training targets.',
)
_LEVEL_EDGES = flags.DEFINE_list(
  'level_edges', None, "Fixed ambiguity edges 'e1,e2' (default: tertiles of the training split)."
)
_TRAIN_CONFIG = flags.DEFINE_string(
  'train_config', _DEFAULTS.train_config, 'Training config file (configs/*.py).'
)
_TRAIN_STEPS = flags.DEFINE_integer('train_steps', None, "Overrides the config's total_steps.")
_FOLDS = flags.DEFINE_list(
  'folds',
  None,
  "Cross-validation: 'all' or a list of folds (IEMOCAP: Session1..Session5, or 1..5); "
  'proxies are generated once and shared by every fold.',
)
_TEST_SPLITS = flags.DEFINE_list(
  'test_splits',
  None,
  'Test split(s) evaluated, each reported (default: test; MSP-Podcast: Test1).',
)
_BOOTSTRAP = flags.DEFINE_integer('bootstrap', _DEFAULTS.bootstrap, 'Bootstrap resamples of the analysis.')
_SPARSE_K = flags.DEFINE_list(
  'sparse_k', [str(k) for k in _DEFAULTS.sparse_k], 'Human votes kept in the sparse-vs-dense study.'
)
_REPEATS = flags.DEFINE_integer('repeats', _DEFAULTS.repeats, 'Seeded draws per k in the study.')
_SEED = flags.DEFINE_integer('seed', _DEFAULTS.seed, 'Seeds every stage.')

# Corpus options: flag -> (corpus, loader option).
_CORPUS_OPTIONS = (
  (_IEMOCAP_TEST, ('iemocap',), 'test_session'),
  (_IEMOCAP_SELF, ('iemocap',), 'self_evaluations'),
  (_IEMOCAP_PROTOCOL, ('iemocap',), 'protocol'),
  (_MSP_PROTOCOL, ('msp_podcast',), 'protocol'),
  (_MSP_X, ('msp_podcast',), 'emo_class_x'),
  (_MSP_O, ('msp_podcast',), 'emo_class_o'),
  (_OUTSIDE_VOTES, ('iemocap', 'msp_podcast'), 'outside_votes'),
  (_CREMA_MODALITY, ('crema_d',), 'modality'),
  (_CREMA_REFERENCE, ('crema_d',), 'reference_modality'),
  (_MANIFEST_VOTES, ('manifest',), 'votes'),
)


def corpus_options(corpus: str) -> dict:
  """The loader options given by flags; a flag of another corpus is refused, naming it."""
  options = {}
  for holder, owners, option in _CORPUS_OPTIONS:
    if holder.value is None:
      continue
    if corpus not in owners:
      raise InputError(f'--{holder.name} applies to --corpus={"|".join(owners)}, not --corpus={corpus}')
    options[option] = holder.value
  return options


def _floats(values: list[str] | None, name: str) -> tuple[float, ...] | None:
  if not values:
    return None
  try:
    return tuple(float(v) for v in values)
  except ValueError:
    raise InputError(f'--{name} takes numbers, got {",".join(values)}') from None


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  cli.on_interrupt(lambda: run_lib.describe_saved(_OUT_DIR.value))
  edges = _floats(_LEVEL_EDGES.value, 'level_edges')
  if edges is not None and len(edges) != 2:
    raise InputError(f'--level_edges takes two edges e1,e2, got {len(edges)}')
  config = pipeline.PipelineConfig(
    out_dir=_OUT_DIR.value,
    corpus=_CORPUS.value,
    corpus_path=_CORPUS_PATH.value,
    corpus_options=corpus_options(_CORPUS.value),
    lenient=_LENIENT.value,
    label_set=_LABEL_SET.value,
    checkpoint=_CHECKPOINT.value,
    dtype=_DTYPE.value,
    prompts_config=_PROMPTS.value,
    prompt_ids=tuple(_PROMPT_IDS.value) if _PROMPT_IDS.value else None,
    votes_per_utterance=_VOTES.value,
    temperature=_TEMPERATURE.value,
    top_k=_TOP_K.value,
    top_p=_TOP_P.value,
    max_new_tokens=_MAX_NEW_TOKENS.value,
    batch_size=_BATCH.value,
    combine=_COMBINE.value,
    level_edges=edges,
    train_config=_TRAIN_CONFIG.value,
    train_steps=_TRAIN_STEPS.value,
    folds=tuple(_FOLDS.value) if _FOLDS.value else None,
    test_splits=tuple(_TEST_SPLITS.value) if _TEST_SPLITS.value else None,
    bootstrap=_BOOTSTRAP.value,
    sparse_k=tuple(int(k) for k in _floats(_SPARSE_K.value, 'sparse_k') or ()),
    repeats=_REPEATS.value,
    seed=_SEED.value,
  )
  config.resolved_label_set()  # a manifest corpus without --label_set stops here, before any work
  outputs = pipeline.run_pipeline(config)
  print(f'report: {outputs["report"]["html"]}')


if __name__ == '__main__':
  cli.run(main)
