"""Input pipeline throughput: perax's Grain pipeline against a plain librosa + Hugging Face loop.

  python launch/benchmark.py --bench=pipeline [--pipeline_workers=2]

Both read EmoDB's recordings (22.05 kHz wavs, resampled to 16 kHz).  perax: every recording as a
training example, plus the DiME-Aug examples that balance its emotions (each one decodes and mixes
two recordings), bucketed log-mel features, prompt token ids and targets, in batches.  Plain: one
file at a time, ``librosa.load(sr=16000)`` then ``WhisperFeatureExtractor(feature_size=128)``
(padding every clip to 30 s, as Qwen2-Audio's processor does), timed twice: on the extractor's
default path (its torch STFT where torch is installed) and on its numpy path (what an install
without torch runs, several times slower).

perax is timed from its first batch on (worker start-up excluded) over whole passes of the data; the
first pass decodes every file, later ones find their audio in the pipeline's cache, and both are
reported.  Each plain loop is timed after one untimed call.  The last line is
``examples/s perax=<x> plain=<y> ratio=<r>`` with perax's first (decoding) pass and the plain loop
on the default path, the stronger baseline; the line before it gives the ratio to the numpy path.
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
import pyarrow as pa
import threadpoolctl
import transformers
from absl import flags

from perax import distributions as dist
from perax.augment import dime_aug, input_pipeline
from perax.core.progress import Progress
from perax.data.corpora import emodb
from perax.data.tables import column
from perax.models.tiny import make_tiny_checkpoint
from perax.raters import prompts

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_EMODB_DIR = flags.DEFINE_string(
  'pipeline_emodb_dir',
  os.path.join(os.path.dirname(_REPO), 'shared', 'data', 'emodb'),
  'EmoDB directory (wav/ and perception.csv).',
)
_CHECKPOINT = flags.DEFINE_string(
  'pipeline_checkpoint',
  None,
  'Checkpoint whose processor tokenizes prompts; default: a tiny one built in a temp dir.',
)
_BATCH = flags.DEFINE_integer('pipeline_batch_size', 16, 'Global batch size.')
_WORKERS = flags.DEFINE_integer('pipeline_workers', 0, 'Grain worker processes.')
_THREADS = flags.DEFINE_integer('pipeline_threads', 2, 'Grain read threads per process.')
_PASSES = flags.DEFINE_integer('pipeline_passes', 2, 'Passes over the data (the first decodes).')
_PLAIN = flags.DEFINE_integer('pipeline_plain_examples', 100, 'Files for the plain loop.')
_BLAS_THREADS = flags.DEFINE_integer(
  'pipeline_blas_threads', 1, 'BLAS threads in this process (0: leave as is).'
)
_SEED = flags.DEFINE_integer('pipeline_seed', 0, 'Seed of DiME-Aug and the shuffle.')


def _emodb_examples(path: str):
  """EmoDB's utterances (all in one split), targets from its perception test, a DiME-Aug plan."""
  corpus = emodb.load(path)
  utterances = corpus.utterances.set_column(
    corpus.utterances.schema.get_field_index('split'),
    'split',
    pa.array(['train'] * corpus.utterances.num_rows),
  )
  targets, _ = dist.build_distributions(corpus.votes, label_set=emodb.NAME, utterances=utterances)
  labels = dist.resolve_label_set(emodb.NAME).labels
  levels = dime_aug.levels_from_split(utterances, targets, labels)
  plan = dime_aug.plan_augmentation(utterances, targets, labels, levels, seed=_SEED.value)
  return utterances, targets, labels, plan


def _time_perax(utterances, targets, labels, plan, processor) -> list[tuple[int, float, float]]:
  """(examples, audio seconds, seconds) of each pass, timed from the first batch on."""
  config = input_pipeline.PipelineConfig(
    global_batch_size=_BATCH.value, num_workers=_WORKERS.value, read_threads=_THREADS.value
  )
  pipeline = input_pipeline.build_pipeline(
    utterances,
    targets,
    labels,
    processor,
    prompts.load_prompts()[0],
    config,
    split='train',
    plan=plan,
    seed=_SEED.value,
    num_epochs=_PASSES.value + 1,
  )
  iterator = iter(pipeline.dataset)
  next(iterator)  # start-up: workers, first decodes
  passes = []
  batches_left = pipeline.batches_per_epoch - 1
  for k in range(_PASSES.value):
    progress = Progress(total=batches_left, unit='batches', what=f'perax pass {k + 1}', every_s=10.0)
    examples, audio_s, start = 0, 0.0, time.perf_counter()
    for _ in range(batches_left):
      batch = next(iterator)
      real = batch['example_mask']
      examples += int(real.sum())
      audio_s += float(batch['feature_lengths'][real].sum()) / 100
      progress.update()
    progress.close()
    passes.append((examples, audio_s, time.perf_counter() - start))
    batches_left = pipeline.batches_per_epoch
  iterator.close()
  return passes


class _NumpyWhisperFeatureExtractor(transformers.WhisperFeatureExtractor):
  """WhisperFeatureExtractor on its numpy path, the one it takes where torch is not installed."""

  def _torch_extract_fbank_features(self, waveform: np.ndarray, device: str = 'cpu') -> np.ndarray:
    return self._np_extract_fbank_features(waveform, device)


def _time_plain(
  paths: list[str], extractor: transformers.WhisperFeatureExtractor, what: str
) -> tuple[int, float, float]:
  """(examples, audio seconds, seconds) of librosa.load + ``extractor``, file by file."""
  import librosa  # pylint: disable=g-import-not-at-top  (only the baseline needs it)

  def one(path: str) -> float:
    waveform, _ = librosa.load(path, sr=16000)
    extractor(waveform, sampling_rate=16000, return_tensors='np', return_attention_mask=True)
    return waveform.size / 16000

  one(paths[0])
  progress = Progress(total=len(paths), unit='examples', what=what, every_s=10.0)
  audio_s, start = 0.0, time.perf_counter()
  for path in paths:
    audio_s += one(path)
    progress.update()
  progress.close()
  return len(paths), audio_s, time.perf_counter() - start


def run() -> None:
  """Runs both loops and prints their rates; the last line compares examples/s."""
  if _BLAS_THREADS.value:
    threadpoolctl.threadpool_limits(limits=_BLAS_THREADS.value, user_api='blas')
  utterances, targets, labels, plan = _emodb_examples(_EMODB_DIR.value)
  with tempfile.TemporaryDirectory() as tmp:
    checkpoint = _CHECKPOINT.value or make_tiny_checkpoint(tmp)
    processor = transformers.AutoProcessor.from_pretrained(checkpoint)
  print(f'machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} (1 min)')
  print(
    f'perax: {utterances.num_rows} recordings + {plan.num_rows} DiME-Aug examples, batch '
    f'{_BATCH.value}, {_WORKERS.value} workers, {_THREADS.value} threads'
  )
  passes = _time_perax(utterances, targets, labels, plan, processor)
  for k, (examples, audio_s, seconds) in enumerate(passes):
    print(
      f'perax pass {k + 1} ({"decoding" if k == 0 else "cached audio"}): {examples} examples, '
      f'{examples / seconds:.1f} examples/s, {audio_s / seconds:.1f} audio-s/s'
    )
  paths = column(utterances, 'audio_path')[: _PLAIN.value].tolist()
  default_path = 'torch' if transformers.utils.is_torch_available() else 'numpy'
  extractors = {default_path: transformers.WhisperFeatureExtractor(feature_size=128)}
  extractors.setdefault('numpy', _NumpyWhisperFeatureExtractor(feature_size=128))
  plain_rates = {}
  for path_name, extractor in extractors.items():
    what = f'plain loop, {path_name} path'
    examples, audio_s, seconds = _time_plain(paths, extractor, what)
    plain_rates[path_name] = examples / seconds
    print(
      f'{what}: {examples} examples, {examples / seconds:.1f} examples/s, {audio_s / seconds:.1f} audio-s/s'
    )
  print(f'machine load average after: {os.getloadavg()[0]:.2f}')
  perax_rate = passes[0][0] / passes[0][2]
  print(
    f'examples/s perax={perax_rate:.1f} plain_numpy={plain_rates["numpy"]:.1f} '
    f'ratio_numpy={perax_rate / plain_rates["numpy"]:.1f}'
  )
  print(
    f'examples/s perax={perax_rate:.1f} plain={plain_rates[default_path]:.1f} '
    f'ratio={perax_rate / plain_rates[default_path]:.1f}'
  )
