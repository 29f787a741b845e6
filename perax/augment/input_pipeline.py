"""The Grain input pipeline: utterances (+ DiME-Aug examples) -> bucketed, padded numpy batches.

The pipeline is a ``grain.MapDataset`` up to the batches themselves, so every element is a pure
function of its index:

1. *Examples*: one record per utterance of the split that has a target (origin 'original'), plus the
   rows of a DiME-Aug plan (origin 'augmented', :mod:`perax.augment.dime_aug`) when one is given.
2. *Batch plan* (:class:`BucketBatches`): for epoch e, the examples are shuffled globally by a
   generator seeded with (seed, e), grouped by audio length bucket (known from the durations in the
   tables) and cut into global batches; the examples a bucket cannot fill a batch with move up to
   the next longer bucket, so every example appears exactly once per epoch and only one batch per
   epoch is partly padding (its padding rows have ``example_mask`` False).  The batches are then
   shuffled.  Evaluation keeps the table order (sorted by bucket) and runs one epoch.
3. *Process slice*: a global batch holds the rows of every process; process p takes rows
   [p * B_local, (p + 1) * B_local).  Slicing rows of one global batch (rather than taking every
   process_count-th batch, as ``ds[p::n]`` would) keeps the bucket, hence the array shapes, equal on
   all processes at every step, as a multi-host jit needs.
4. *Load* (:class:`BatchLoader`, numpy only, run in Grain's workers): decode (any sample rate ->
   16 kHz, segment cut where the corpus gives start_s/end_s), render DiME-Aug examples, Whisper
   log-mel padded to the bucket, the prompt's token ids with one ``<|AUDIO|>`` per valid audio
   embedding (HF's formula), padded to the bucket's token length, and the target distribution.

Every batch of audio bucket b has input_features [B, 128, 100 b] and input_ids [B, L_b] with L_b
fixed per bucket, so a jitted step compiles once per bucket.  Elements depend on the seed only: the
number of Grain workers and threads changes the speed, never the batches, and the iterator's state
(``get_state``/``set_state``, or Orbax's grain handler, as perax.train.checkpointing saves it)
resumes exactly.

Batch arrays (B = per-process batch, C = labels):
  input_features  [B, 128, F] float32   log-mel, zero-padded past each clip's frames
  feature_lengths [B] int32             valid frames (HF's feature_attention_mask.sum(-1))
  input_ids       [B, L] int32          prompt ids, padded with the tokenizer's pad id
  attention_mask  [B, L] bool           True on prompt tokens
  positions       [B, L] int32          cumsum(attention_mask) - 1, 0 on padding
  targets         [B, C] float32        target distributions (non-negative, rows sum to 1)
  example_mask    [B] bool              False on padding rows (copies of the batch's first example)
  example_index   [B] int32             index into ``InputPipeline.utt_ids``; -1 on padding rows
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import grain
import numpy as np
import pyarrow as pa
import threadpoolctl

from perax.augment.batch_loader import BatchLoader
from perax.augment.batch_plan import BucketBatches, bucket_indices, example_records
from perax.augment.prompt_ids import PromptIds
from perax.data import features
from perax.raters import prompts

PADDING_SIDES = ('left', 'right')


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """Batching and parallelism of the input pipeline.

  Attributes:
    global_batch_size: examples per step over all processes; divisible by ``data_parallel_size``
      and by the process count.
    data_parallel_size: size of the mesh's data-parallel axes.
    bucket_seconds: the audio length buckets (ascending); longer clips are cut to the last.
    max_transcript_tokens: transcript tokens kept when the prompt holds ``{transcript}``.
    token_multiple: token lengths are rounded up to a multiple of this.
    padding_side: 'left' (prompts end at the last position, as for generation) or 'right'.
    num_workers: Grain worker processes (0: load in this process); each uses one BLAS thread.
    read_threads: threads loading elements in each process.
    prefetch_batches: batches read ahead per process.
    audio_cache_mb: decoded 16 kHz audio kept per process (least recently used evicted), so that
      DiME-Aug partners and later epochs do not decode a file again; 0 turns it off.
  """

  global_batch_size: int
  data_parallel_size: int = 1
  bucket_seconds: tuple[int, ...] = features.BUCKET_SECONDS
  max_transcript_tokens: int = 64
  token_multiple: int = 8
  padding_side: str = 'left'
  num_workers: int = 0
  read_threads: int = 2
  prefetch_batches: int = 4
  audio_cache_mb: int = 256

  def __post_init__(self):
    if self.global_batch_size < 1 or self.global_batch_size % self.data_parallel_size:
      raise ValueError(
        f'global_batch_size {self.global_batch_size} must be a positive multiple of '
        f'data_parallel_size {self.data_parallel_size}'
      )
    if list(self.bucket_seconds) != sorted(set(self.bucket_seconds)):
      raise ValueError(f'bucket_seconds must ascend, got {self.bucket_seconds}')
    if self.padding_side not in PADDING_SIDES:
      raise ValueError(f'padding_side must be one of {PADDING_SIDES}, got {self.padding_side!r}')


# ----------------------------------------------------------------------------------------------
# Pipelines.


@dataclasses.dataclass(frozen=True)
class InputPipeline:
  """A built pipeline.

  Attributes:
    dataset: the Grain dataset of batches (``iter()`` gives a checkpointable iterator).
    utt_ids: [N] example ids; a batch's ``example_index`` indexes them.
    batches_per_epoch: global batches in one epoch.
    labels: the target's labels, in order.
  """

  dataset: grain.IterDataset
  utt_ids: np.ndarray
  batches_per_epoch: int
  labels: tuple[str, ...]


def _one_blas_thread(worker_index: int, worker_count: int) -> None:
  """Grain worker setup: one BLAS thread per worker, so workers do not oversubscribe the cores."""
  del worker_index, worker_count
  threadpoolctl.threadpool_limits(limits=1, user_api='blas')


def _process_index_and_count(process_index: int | None, process_count: int | None):
  if process_index is None or process_count is None:
    shard = grain.sharding.ShardByJaxProcess()
    return shard.shard_index, shard.shard_count
  return process_index, process_count


def build_pipeline(
  utterances: pa.Table,
  distributions: pa.Table,
  labels: Sequence[str],
  processor,
  prompt: prompts.Prompt,
  config: PipelineConfig,
  *,
  split: str,
  plan: pa.Table | None = None,
  originals: bool = True,
  seed: int | None = 0,
  num_epochs: int | None = None,
  process_index: int | None = None,
  process_count: int | None = None,
) -> InputPipeline:
  """The pipeline of one split.

  Args:
    utterances: utterances table (perax.data.tables).
    distributions: utt_id and ``p_<label>`` per label.
    labels: the label set's labels, in column order.
    processor: the checkpoint's processor (its tokenizer and chat template are used).
    prompt: the question; with ``{transcript}`` the example's transcript goes into it.
    config: batching and parallelism.
    split: which utterances.
    plan: DiME-Aug rows to mix in (anchors and partners from ``split``), or None.
    originals: include the split's own utterances (see :func:`example_records`).
    seed: shuffles per epoch; None keeps table order (for evaluation).
    num_epochs: None repeats forever.
    process_index, process_count: this process's slice; JAX's when None.

  Returns:
    The pipeline; its batches hold global_batch_size / process_count rows.
  """
  process_index, process_count = _process_index_and_count(process_index, process_count)
  records = example_records(utterances, distributions, labels, split, plan, originals)
  buckets = bucket_indices([r['duration_s'] for r in records], config.bucket_seconds)
  batches = BucketBatches(buckets, config.global_batch_size, seed, num_epochs, process_index, process_count)
  prompt_ids = PromptIds(processor, prompt, labels, config.max_transcript_tokens, config.token_multiple)
  dataset = batches.map(
    BatchLoader(records, prompt_ids, config.bucket_seconds, config.padding_side, config.audio_cache_mb << 20)
  )
  dataset = dataset.to_iter_dataset(
    grain.ReadOptions(num_threads=config.read_threads, prefetch_buffer_size=config.prefetch_batches)
  )
  if config.num_workers:
    dataset = dataset.mp_prefetch(
      grain.MultiprocessingOptions(num_workers=config.num_workers), worker_init_fn=_one_blas_thread
    )
  return InputPipeline(
    dataset=dataset,
    utt_ids=np.asarray([r['utt_id'] for r in records], object),
    batches_per_epoch=batches.batches_per_epoch,
    labels=tuple(labels),
  )


def make_train_iterator(
  utterances: pa.Table,
  distributions: pa.Table,
  labels: Sequence[str],
  processor,
  prompt: prompts.Prompt,
  config: PipelineConfig,
  *,
  seed: int,
  split: str = 'train',
  plan: pa.Table | None = None,
  num_epochs: int | None = None,
  process_index: int | None = None,
  process_count: int | None = None,
) -> grain.DatasetIterator:
  """A checkpointable iterator over shuffled training batches (forever unless ``num_epochs``).

  Arguments as for :func:`build_pipeline`; ``plan`` is the DiME-Aug plan of the training split.
  """
  return iter(
    build_pipeline(
      utterances,
      distributions,
      labels,
      processor,
      prompt,
      config,
      split=split,
      plan=plan,
      seed=seed,
      num_epochs=num_epochs,
      process_index=process_index,
      process_count=process_count,
    ).dataset
  )


def make_eval_iterator(
  utterances: pa.Table,
  distributions: pa.Table,
  labels: Sequence[str],
  processor,
  prompt: prompts.Prompt,
  config: PipelineConfig,
  *,
  split: str = 'test',
  eval_set: pa.Table | None = None,
  process_index: int | None = None,
  process_count: int | None = None,
) -> grain.DatasetIterator:
  """One pass over a split in table order (sorted by bucket); padding rows are masked.

  Arguments as for :func:`build_pipeline`; with ``eval_set`` (:func:`perax.augment.dime_aug.build_eval_set`)
  the examples are exactly its rows, else every utterance of ``split`` with a target.  Use
  :func:`build_pipeline` directly to map ``example_index`` back to utt_ids.
  """
  return iter(
    build_pipeline(
      utterances,
      distributions,
      labels,
      processor,
      prompt,
      config,
      split=split,
      plan=eval_set,
      originals=eval_set is None,
      seed=None,
      num_epochs=1,
      process_index=process_index,
      process_count=process_count,
    ).dataset
  )
