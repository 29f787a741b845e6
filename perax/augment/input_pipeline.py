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

import collections
import dataclasses
import math
import sys
import threading
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np
import pyarrow as pa
import threadpoolctl

from perax.augment.audio_mix import ORIGINAL, SAMPLE_RATE, render, utterance_durations
from perax.augment.dime_aug import target_matrix
from perax.core.errors import InputError
from perax.data import audio, features
from perax.data.tables import column, label_columns
from perax.raters import prompts

PADDING_SIDES = ('left', 'right')
# Stands for the transcript while the chat template is rendered once per prompt.
_TRANSCRIPT_SLOT = '\x00transcript\x00'


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


# ----------------------------------------------------------------------------------------------
# Prompts.


class PromptIds:
  """Token ids of a prompt for one example, with its transcript and audio tokens, at a fixed length.

  The prompt's question is rendered through the chat template once, with a slot for the transcript;
  per example, the slot is filled and perax.raters.prompts.PromptEncoder (the one splicing home)
  tokenizes the text whole (so ids equal HF's processor's) and expands the one ``<|AUDIO|>`` to the
  clip's audio token count.  A transcript is cut to ``max_transcript_tokens`` tokens so that every
  example of a bucket fits ``length(bucket)``.
  """

  def __init__(
    self,
    processor,
    prompt: prompts.Prompt,
    labels: Sequence[str],
    max_transcript_tokens: int,
    token_multiple: int,
  ):
    tokenizer = processor.tokenizer
    self.encoder = prompts.PromptEncoder(processor)
    # The Rust tokenizer, for transcripts alone: encoding never mutates it, so Grain's threads share it.
    self.tokenizer = tokenizer.backend_tokenizer
    self.audio_token_id = self.encoder.audio_token_id
    self.pad_id = (
      tokenizer.pad_token_id
      if tokenizer.pad_token_id is not None
      else tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    )
    self.uses_transcript = prompt.uses_transcript
    self.chat_text = prompts.render_chat(
      processor, prompt.question(labels, _TRANSCRIPT_SLOT if self.uses_transcript else None)
    )
    self.max_transcript_tokens = max_transcript_tokens if self.uses_transcript else 0
    self.token_multiple = token_multiple
    # The prompt without transcript or audio: one audio token spliced in, then not counted.
    self._base_length = len(self._encode(self.chat_text.replace(_TRANSCRIPT_SLOT, ''), 1)) - 1

  def _encode(self, text: str, num_audio_tokens: int) -> np.ndarray:
    try:
      return self.encoder.ids(text, num_audio_tokens)
    except ValueError as error:
      raise InputError(str(error)) from None

  def length(self, num_frames: int) -> int:
    """L: the token length of every example of a bucket of ``num_frames`` log-mel frames."""
    longest = (
      self._base_length
      + int(prompts.num_audio_tokens(np.asarray([num_frames]))[0])
      + self.max_transcript_tokens
    )
    return -(-longest // self.token_multiple) * self.token_multiple

  def _truncated(self, transcript: str, budget: int) -> str:
    ids = self.tokenizer.encode(transcript, add_special_tokens=False).ids
    return transcript if len(ids) <= budget else self.tokenizer.decode(ids[: max(budget, 0)])

  def ids(self, transcript: str | None, num_audio_tokens: int, max_length: int) -> np.ndarray:
    """[<= max_length] int32 ids of the prompt for one example.

    Args:
      transcript: the example's transcript (used where the prompt holds ``{transcript}``).
      num_audio_tokens: the clip's audio token count, at most that of ``max_length``'s bucket.
      max_length: ``length(frames)`` of the example's bucket.

    Raises:
      InputError: the prompt needs a transcript and the example has none.
    """
    if not self.uses_transcript:
      return self._encode(self.chat_text, num_audio_tokens)
    if transcript is None:
      raise InputError('the prompt needs {transcript} but the example has none')
    budget = self.max_transcript_tokens
    while True:  # Ends: with an empty transcript the ids fit by the definition of length().
      text = self.chat_text.replace(_TRANSCRIPT_SLOT, self._truncated(transcript, budget))
      ids = self._encode(text, num_audio_tokens)
      excess = len(ids) - max_length
      if excess <= 0:
        return ids
      budget = max(budget - excess, 0)


# ----------------------------------------------------------------------------------------------
# Loading a batch (Grain's workers: numpy only).


Source = tuple[str, float | None, float | None]  # (audio_path, start_s, end_s)


class WaveformCache:
  """Decoded 16 kHz waveforms by source, least recently used first out beyond ``max_bytes``.

  Thread-safe; the waveforms it returns are read-only.  Caching never changes a value, only whether
  a file is decoded again.
  """

  def __init__(self, max_bytes: int):
    self.max_bytes = max_bytes
    self._waveforms: collections.OrderedDict[Source, np.ndarray] = collections.OrderedDict()
    self._bytes = 0
    self._lock = threading.Lock()

  def get(self, source: Source) -> np.ndarray:
    """The waveform [T] float32 of ``source``, decoded by perax.data.audio.load_audio on a miss."""
    with self._lock:
      waveform = self._waveforms.get(source)
      if waveform is not None:
        self._waveforms.move_to_end(source)
        return waveform
    path, start_s, end_s = source
    waveform = audio.load_audio(path, sr=SAMPLE_RATE, start_s=start_s, end_s=end_s)
    waveform.flags.writeable = False
    if waveform.nbytes <= self.max_bytes:
      with self._lock:
        if source not in self._waveforms:
          self._waveforms[source] = waveform
          self._bytes += waveform.nbytes
        while self._bytes > self.max_bytes:
          self._bytes -= self._waveforms.popitem(last=False)[1].nbytes
    return waveform

  def __getstate__(self):  # Each process starts with an empty cache (locks do not pickle).
    return {'max_bytes': self.max_bytes}

  def __setstate__(self, state):
    self.__init__(state['max_bytes'])


class BatchLoader:
  """Turns a batch plan element into the batch arrays of the module docstring (numpy only)."""

  def __init__(
    self,
    records: Sequence[dict],
    prompt_ids: PromptIds,
    bucket_seconds: Sequence[int],
    padding_side: str,
    audio_cache_bytes: int,
  ):
    self.records = records
    self.prompt_ids = prompt_ids
    self.bucket_seconds = tuple(bucket_seconds)
    self.padding_side = padding_side
    self.waveforms = WaveformCache(audio_cache_bytes)

  def _example(self, index: int, max_samples: int) -> tuple[np.ndarray, str | None, np.ndarray]:
    record = self.records[index]
    waveform, transcript, target = render(record, lambda u: self.waveforms.get(record['sources'][u]))
    return waveform[:max_samples], transcript, target

  def __call__(self, element: dict[str, Any]) -> dict[str, np.ndarray]:
    seconds = self.bucket_seconds[element['bucket']]
    rows = np.asarray(element['rows'], np.int64)
    real = rows >= 0
    if not real.any() and element.get('fill', -1) < 0:
      raise ValueError('a batch needs at least one example')
    examples = {int(r): self._example(int(r), seconds * SAMPLE_RATE) for r in np.unique(rows[real])}
    fill = int(rows[real][0]) if real.any() else int(element['fill'])
    if fill not in examples:
      examples[fill] = self._example(fill, seconds * SAMPLE_RATE)
    waveforms, transcripts, targets = zip(*(examples[int(r) if r >= 0 else fill] for r in rows))
    input_features, feature_lengths = features.batch_features(list(waveforms), bucket_seconds=seconds)
    length = self.prompt_ids.length(input_features.shape[-1])
    n_audio = prompts.num_audio_tokens(feature_lengths)
    input_ids = np.full((len(rows), length), self.prompt_ids.pad_id, np.int32)
    attention_mask = np.zeros((len(rows), length), bool)
    for b, (transcript, count) in enumerate(zip(transcripts, n_audio)):
      ids = self.prompt_ids.ids(transcript, int(count), length)
      span = slice(length - len(ids), length) if self.padding_side == 'left' else slice(0, len(ids))
      input_ids[b, span] = ids
      attention_mask[b, span] = True
    positions = np.maximum(np.cumsum(attention_mask, axis=1) - 1, 0).astype(np.int32)
    return {
      'input_features': input_features,
      'feature_lengths': feature_lengths,
      'input_ids': input_ids,
      'attention_mask': attention_mask,
      'positions': positions,
      'targets': np.stack(targets).astype(np.float32),
      'example_mask': real,
      'example_index': rows.astype(np.int32),
    }


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
