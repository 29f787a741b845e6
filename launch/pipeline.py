"""The main job: the whole system end to end, writing report.html and report.md.

  python launch/pipeline.py                       # the embedded demo corpus, a tiny random model
  python launch/pipeline.py --corpus=iemocap --corpus_path=/data/IEMOCAP_full_release \
      --label_set=iemocap4 --checkpoint=/ckpt/Qwen2-Audio-7B-Instruct-perax \
      --train_config=configs/iemocap.py --dtype=bfloat16 --out_dir=runs/iemocap

Stages (prepare, checkpoint, proxies, distributions, augment, train, evaluate, analyze, report) each
reuse their outputs when present, so rerunning the same command resumes. See perax/pipeline.py.
"""

from absl import app, flags

from perax import pipeline
from perax.core import cli
from perax.data import corpora

_DEFAULTS = pipeline.PipelineConfig()

_OUT_DIR = flags.DEFINE_string('out_dir', _DEFAULTS.out_dir, 'Where everything goes; reruns resume.')
_CORPUS = flags.DEFINE_enum('corpus', _DEFAULTS.corpus, corpora.CORPORA, 'The corpus.')
_CORPUS_PATH = flags.DEFINE_string('corpus_path', None, 'The corpus directory (demo: generated).')
_CREMA_MODALITY = flags.DEFINE_enum(
  'crema_modality', None, ['voice', 'face', 'audiovisual'], 'CREMA-D rater pool of the human votes.'
)
_LABEL_SET = flags.DEFINE_string('label_set', _DEFAULTS.label_set, 'Label set name or labels.')
_CHECKPOINT = flags.DEFINE_string(
  'checkpoint', None, 'HF or converted Qwen2-Audio directory; default: a tiny random one (demo).'
)
_DTYPE = flags.DEFINE_enum(
  'dtype', _DEFAULTS.dtype, ['float32', 'bfloat16'], 'Compute dtype of proxy generation.'
)
_PROMPTS = flags.DEFINE_string(
  'prompts_config', None, 'Prompts JSON (default: configs/prompts/default.json).'
)
_PROMPT_IDS = flags.DEFINE_list('prompt_ids', None, 'Prompt ids of the prompts file to use.')
_VOTES = flags.DEFINE_integer(
  'votes_per_utterance', _DEFAULTS.votes_per_utterance, 'Sampled proxy votes per utterance and prompt.'
)
_TEMPERATURE = flags.DEFINE_float('temperature', _DEFAULTS.temperature, 'Sampling temperature.')
_BATCH = flags.DEFINE_integer('batch_size', _DEFAULTS.batch_size, 'Clips per proxy batch.')
_COMBINE = flags.DEFINE_enum(
  'combine',
  _DEFAULTS.combine,
  ['none', 'pooled', 'mixture', 'dirichlet'],
  'How human votes and proxy scores make the training targets.',
)
_TRAIN_CONFIG = flags.DEFINE_string(
  'train_config', _DEFAULTS.train_config, 'Training config file (configs/*.py).'
)
_TRAIN_STEPS = flags.DEFINE_integer('train_steps', None, "Overrides the config's total_steps.")
_BOOTSTRAP = flags.DEFINE_integer('bootstrap', _DEFAULTS.bootstrap, 'Bootstrap resamples.')
_SEED = flags.DEFINE_integer('seed', _DEFAULTS.seed, 'Seeds every stage.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  corpus_options = {'modality': _CREMA_MODALITY.value} if _CREMA_MODALITY.value else {}
  pipeline.run_pipeline(
    pipeline.PipelineConfig(
      out_dir=_OUT_DIR.value,
      corpus=_CORPUS.value,
      corpus_path=_CORPUS_PATH.value,
      corpus_options=corpus_options,
      label_set=_LABEL_SET.value,
      checkpoint=_CHECKPOINT.value,
      dtype=_DTYPE.value,
      prompts_config=_PROMPTS.value,
      prompt_ids=tuple(_PROMPT_IDS.value) if _PROMPT_IDS.value else None,
      votes_per_utterance=_VOTES.value,
      temperature=_TEMPERATURE.value,
      batch_size=_BATCH.value,
      combine=_COMBINE.value,
      train_config=_TRAIN_CONFIG.value,
      train_steps=_TRAIN_STEPS.value,
      bootstrap=_BOOTSTRAP.value,
      seed=_SEED.value,
    )
  )


if __name__ == '__main__':
  cli.run(main)
