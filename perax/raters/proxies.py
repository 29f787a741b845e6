"""Synthetic Perceptual Proxies in bulk: votes (or exact label scores) for a manifest's utterances.

Output, under ``out_dir``:

- ``votes.parquet`` (mode ``sample``): one row per vote in perax.data.tables.VOTE_SCHEMA plus
  ``prompt_id``, ``vote_index`` (int32) and ``valid`` (the parsed label is in the label set, merges
  applied); ``rater = '<model>|<prompt_id>'``, ``source = 'synthetic'``, ``weight = 1``, ``text``
  the decoded answer and ``label`` its parse (perax.data.labels.parse_label; INVALID when unparseable);
- ``scores.parquet`` (mode ``score``): utt_id, prompt_id, ``p_<label>`` (the answer distribution
  normalised over the label set) and ``label_mass`` (the probability of answering with any label);
- ``shards/``: the resumable work. The manifest is cut into shards of ``shard_size`` consecutive
  utterances; shard ``s`` is done once ``shards/part-sssss.parquet`` exists (written atomically
  after its sidecar ``part-sssss.json``, which counts the utterances whose audio could not be read).
  ``shards/job.json`` fingerprints the job; a rerun with the same job skips finished shards, so a
  job killed at any moment completes with no lost and no duplicated rows. The final table is the
  shards concatenated in manifest order.

Work is data-parallel over the local devices (the batch is sharded over a 'data' mesh axis) and each
JAX process takes shards ``process_index, process_index + process_count, ...``; process 0 merges.
Randomness is keyed by (seed, prompt_id, utt_id, vote index), so results do not depend on batch
size, shard size, process count or resumption.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable

import jax
import numpy as np
import pyarrow as pa
from jax.sharding import Mesh

from perax.core import atomic
from perax.core.errors import InputError, SkipCounter
from perax.core.progress import Progress
from perax.data import audio as audio_io
from perax.data import features as mel
from perax.data import labels as labels_lib
from perax.data import tables
from perax.models import loading
from perax.raters import prompts as prompts_lib
from perax.raters import sampler as sampler_lib

MODES = ('sample', 'score')
SHARD_DIR = 'shards'
JOB_FILE = 'job.json'
OUTPUT_FILES = {'sample': 'votes.parquet', 'score': 'scores.parquet'}
LABEL_MASS = 'label_mass'


@dataclasses.dataclass(frozen=True)
class ProxyJob:
  """What to generate; every field except ``batch_size`` and ``lenient_audio`` is fingerprinted.

  Attributes:
    model_name: names the model in ``rater`` ('<model_name>|<prompt_id>').
    label_set: the labels written into the prompt and scored.
    prompts: the rater prompts (personas).
    system_prompt: replaces the chat template's default system prompt; None keeps it.
    mode: 'sample' (K votes per utterance and prompt) or 'score' (exact label probabilities).
    votes_per_utterance: K per prompt (sample mode).
    temperature, top_k, top_p, max_new_tokens, constrained, stop_strings: sampling (see
      perax.raters.sampler.SamplingConfig).
    seed: the run's seed.
    batch_size: clips per device batch (rounded up to a multiple of the local device count).
    shard_size: utterances per output shard.
    lenient_audio: count and skip utterances whose audio cannot be read (else raise).
  """

  model_name: str
  label_set: labels_lib.LabelSet
  prompts: tuple[prompts_lib.Prompt, ...]
  system_prompt: str | None = None
  mode: str = 'sample'
  votes_per_utterance: int = 10
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  max_new_tokens: int = 8
  constrained: bool = False
  stop_strings: tuple[str, ...] = ('\n',)
  seed: int = 0
  batch_size: int = 8
  shard_size: int = 256
  lenient_audio: bool = True

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f'mode must be one of {MODES}, got {self.mode!r}')
    if self.shard_size < 1 or self.batch_size < 1:
      raise ValueError('shard_size and batch_size must be >= 1')
    if not self.prompts:
      raise ValueError('at least one prompt is needed')

  def fingerprint(self, utterances: pa.Table) -> dict:
    """The job's identity: everything that changes the output, plus a digest of the manifest."""
    digest = hashlib.sha256('\n'.join(tables.column(utterances, 'utt_id')).encode()).hexdigest()
    sampling = (
      'votes_per_utterance',
      'temperature',
      'top_k',
      'top_p',
      'max_new_tokens',
      'constrained',
      'stop_strings',
    )
    return {
      'model_name': self.model_name,
      'label_set': self.label_set.name,
      'labels': list(self.label_set.labels),
      'merges': dict(self.label_set.merges),
      'prompts': [dataclasses.asdict(p) for p in self.prompts],
      'system_prompt': self.system_prompt,
      'mode': self.mode,
      'seed': self.seed,
      'shard_size': self.shard_size,
      'utterances': utterances.num_rows,
      'utt_ids_sha256': digest,
      **({k: _jsonable(getattr(self, k)) for k in sampling} if self.mode == 'sample' else {}),
    }


def _jsonable(value):
  return list(value) if isinstance(value, tuple) else value


@dataclasses.dataclass
class ProxyResult:
  """What a run did.

  Attributes:
    output: the merged table's path, or None when another process's shards are still missing.
    shards_done: shards finished by this run (not counting those found done).
    rows: rows in the merged table (0 when not merged).
    skipped: utterances whose audio could not be read, over all shards.
    compiles: jit compilations of the sampler's functions in this process so far.
  """

  output: str | None
  shards_done: int
  rows: int
  skipped: SkipCounter
  compiles: int


def model_name(checkpoint: str) -> str:
  """The rater's model name for a checkpoint directory: its base name."""
  return os.path.basename(os.path.normpath(checkpoint))


def generate_from_files(
  job: ProxyJob, checkpoint: str, manifest: str, out_dir: str, *, dtype: str = 'float32'
) -> ProxyResult:
  """Loads the model and the manifest, then runs :func:`generate`.

  Args:
    job: what to generate.
    checkpoint: a converted perax directory or an HF Qwen2-Audio directory.
    manifest: utterances table (Parquet, CSV or JSONL).
    out_dir: output directory.
    dtype: compute dtype name ('float32' or 'bfloat16').
  """
  utterances = tables.read_utterances(manifest)
  model, _, processor = loading.load_model(checkpoint, dtype=dtype)
  return generate(job, utterances, out_dir, model, processor)


def local_mesh() -> Mesh:
  """A one-axis 'data' mesh over this process's devices."""
  return Mesh(np.asarray(jax.local_devices()), ('data',))


def generate(
  job: ProxyJob,
  utterances: pa.Table,
  out_dir: str,
  model,
  processor,
  *,
  mesh: Mesh | None = None,
  print_fn: Callable[[str], None] = print,
) -> ProxyResult:
  """Generates the job's votes or scores for ``utterances`` into ``out_dir`` (resumable).

  Args:
    job: what to generate.
    utterances: a manifest in perax.data.tables.UTTERANCE_SCHEMA (audio_path, start_s, end_s, transcript
      are used).
    out_dir: output directory (see the module docstring).
    model: a perax Qwen2AudioForConditionalGeneration.
    processor: the checkpoint's HF processor (chat template, tokenizer).
    mesh: a 'data' mesh to shard batches over; :func:`local_mesh` when None.
    print_fn: where progress and summaries go.

  Returns:
    A :class:`ProxyResult`.

  Raises:
    InputError: an empty manifest, unreadable audio when not ``job.lenient_audio``, a missing
      transcript for a transcript prompt, or an ``out_dir`` holding shards of a different job.
  """
  if not utterances.num_rows:
    raise InputError('the manifest has no utterances')
  mesh = local_mesh() if mesh is None else mesh
  devices = mesh.shape['data']
  batch_size = -(-job.batch_size // devices) * devices
  if batch_size != job.batch_size:
    print_fn(f'batch size {job.batch_size} rounded up to {batch_size}, a multiple of {devices} devices')
  shard_dir = os.path.join(out_dir, SHARD_DIR)
  _claim(shard_dir, job.fingerprint(utterances))
  worker = _Worker(job, model, processor, batch_size, mesh)

  n_shards = -(-utterances.num_rows // job.shard_size)
  mine = list(range(jax.process_index(), n_shards, jax.process_count()))
  progress = Progress(
    total=sum(_shard_rows(utterances, s, job.shard_size) for s in mine),
    unit='utt',
    what=f'proxies ({job.mode})',
    print_fn=print_fn,
  )
  done_now = 0
  for shard in mine:
    rows = _shard_rows(utterances, shard, job.shard_size)
    if os.path.exists(_part_path(shard_dir, shard)):
      progress.update(rows, resumed=True)
      continue
    part = utterances.slice(shard * job.shard_size, rows)
    table, skipped = worker.run(part, progress)
    _write_json(
      _part_path(shard_dir, shard, '.json'),
      {'utterances': rows, 'skipped': dict(skipped.counts), 'examples': skipped.examples},
    )
    tables.write_table(table, _part_path(shard_dir, shard))
    done_now += 1
  progress.close()

  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    multihost_utils.sync_global_devices('perax.raters.proxies shards written')
  skipped = _skipped_total(shard_dir, n_shards)
  result = ProxyResult(None, done_now, 0, skipped, sampler_lib.compile_count())
  if jax.process_index() == 0:
    missing = [s for s in range(n_shards) if not os.path.exists(_part_path(shard_dir, s))]
    if missing:
      print_fn(f'{len(missing)} of {n_shards} shards still missing; rerun to complete')
    else:
      merged = tables.concat([tables.read_table(_part_path(shard_dir, s)) for s in range(n_shards)])
      result.output = tables.write_table(merged, os.path.join(out_dir, OUTPUT_FILES[job.mode]))
      result.rows = merged.num_rows
      print_fn(f'wrote {result.rows} rows to {result.output}')
  print_fn(f'unreadable audio: {skipped.summary()}')
  return result


class _Worker:
  """Turns one shard of utterances into its output table."""

  def __init__(self, job: ProxyJob, model, processor, batch_size: int, mesh: Mesh):
    self.job = job
    self.processor = processor
    self.batch_size = batch_size
    self.sampler = sampler_lib.Sampler(model, processor.tokenizer, batch_size=batch_size, mesh=mesh)
    self.encoder = prompts_lib.PromptEncoder(processor)
    self._chat_texts: dict[str, str] = {}
    self.label_tokens = sampler_lib.LabelTokens.build(processor.tokenizer, job.label_set.labels)
    self.config = (
      None
      if job.mode == 'score'
      else self.sampler.config(
        votes_per_clip=job.votes_per_utterance,
        max_new_tokens=job.max_new_tokens,
        temperature=job.temperature,
        top_k=job.top_k,
        top_p=job.top_p,
        constrained=job.constrained,
        stop_strings=job.stop_strings,
        eos_ids=sampler_lib.eos_token_ids(processor.tokenizer),
      )
    )

  def run(self, part: pa.Table, progress: Progress) -> tuple[pa.Table, SkipCounter]:
    """The output rows of ``part`` in manifest order, and the utterances skipped for bad audio."""
    skipped = SkipCounter()
    waveforms = self._load_audio(part, skipped)
    progress.update(part.num_rows - len(waveforms))
    results = {}  # manifest row -> list of output row dicts
    utt_ids = tables.column(part, 'utt_id')
    transcripts = tables.column(part, 'transcript')
    buckets = {}
    for row, waveform in waveforms.items():
      buckets.setdefault(mel.bucket_for(len(waveform)), []).append(row)
    for bucket_seconds, rows in sorted(buckets.items()):
      for start in range(0, len(rows), self.batch_size):
        batch = rows[start : start + self.batch_size]
        padded = sampler_lib.pad_rows(batch, self.batch_size)
        features, lengths = mel.batch_features([waveforms[r] for r in padded], bucket_seconds)
        encoded = self.sampler.encode(features, lengths)
        for prompt in self.job.prompts:
          prompt_ids = [
            self._prompt_ids(prompt, utt_ids[r], transcripts[r], encoded.num_tokens[i])
            for i, r in enumerate(padded)
          ]
          ids = [str(utt_ids[r]) for r in padded]
          if self.job.mode == 'score':
            out = self._score_rows(encoded, prompt_ids, ids, prompt)
          else:
            out = self._vote_rows(encoded, prompt_ids, ids, prompt)
          for row, row_out in zip(batch, out):
            results.setdefault(row, []).extend(row_out)
        progress.update(len(batch))
    ordered = [r for row in sorted(results) for r in results[row]]
    return self._table(ordered), skipped

  def _load_audio(self, part: pa.Table, skipped: SkipCounter) -> dict[int, np.ndarray]:
    """Waveforms by row (16 kHz, at most 30 s); unreadable ones are counted or raise."""
    waveforms = {}
    for row, (utt_id, path, start, end) in enumerate(
      zip(*(tables.column(part, name) for name in ('utt_id', 'audio_path', 'start_s', 'end_s')))
    ):
      try:
        if path is None:
          raise InputError('utterance has no audio_path', item=utt_id)
        waveform = audio_io.load_audio(
          path,
          sr=mel.SAMPLE_RATE,
          start_s=None if np.isnan(start) else float(start),
          end_s=None if np.isnan(end) else float(end),
        )
        if not len(waveform):
          raise InputError('audio is empty', path=path, item=utt_id)
      except InputError as e:
        error = e if e.item is not None else InputError(e.reason, path=e.path or path, item=utt_id)
        if not self.job.lenient_audio:
          raise error from e
        skipped.skip(error, reason='unreadable audio')
        continue
      waveforms[row] = waveform[: mel.MAX_SAMPLES]
    return waveforms

  def _prompt_ids(
    self, prompt: prompts_lib.Prompt, utt_id: str, transcript: str | None, n_audio: int
  ) -> np.ndarray:
    try:
      question = prompt.question(self.job.label_set.labels, transcript)
    except InputError as e:
      raise InputError(e.reason, item=f'{utt_id} (prompt {prompt.prompt_id})') from e
    text = self._chat_texts.get(question)
    if text is None:
      text = prompts_lib.render_chat(self.processor, question, self.job.system_prompt)
      self._chat_texts[question] = text
    return self.encoder.ids(text, int(n_audio))

  def _vote_rows(self, encoded, prompt_ids, utt_ids, prompt) -> list[list[dict]]:
    tokens = self.sampler.sample(
      encoded,
      prompt_ids,
      self.config,
      seed=self.job.seed,
      utt_ids=utt_ids,
      prompt_id=prompt.prompt_id,
      label_tokens=self.label_tokens,
    )
    texts = self.sampler.texts(tokens, self.job.stop_strings)
    rater = f'{self.job.model_name}|{prompt.prompt_id}'
    out = []
    for utt_id, clip_texts in zip(utt_ids, texts):
      parsed = [labels_lib.parse_label(text) for text in clip_texts]
      valid = self.job.label_set.index(parsed) >= 0
      out.append(
        [
          {
            'utt_id': utt_id,
            'rater': rater,
            'source': tables.SYNTHETIC,
            'label': label,
            'weight': 1.0,
            'text': text,
            'prompt_id': prompt.prompt_id,
            'vote_index': k,
            'valid': bool(ok),
          }
          for k, (text, label, ok) in enumerate(zip(clip_texts, parsed, valid))
        ]
      )
    return out

  def _score_rows(self, encoded, prompt_ids, utt_ids, prompt) -> list[list[dict]]:
    logp = self.sampler.score(encoded, prompt_ids, self.label_tokens)
    probs = sampler_lib.normalise(logp)
    mass = np.exp(logp.astype(np.float64)).sum(axis=-1)
    columns = tables.label_columns(self.job.label_set.labels)
    return [
      [
        {
          'utt_id': utt_id,
          'prompt_id': prompt.prompt_id,
          **dict(zip(columns, map(float, p))),
          LABEL_MASS: float(m),
        }
      ]
      for utt_id, p, m in zip(utt_ids, probs, mass)
    ]

  def _table(self, rows: list[dict]) -> pa.Table:
    if self.job.mode == 'score':
      schema = pa.schema(
        [('utt_id', pa.string()), ('prompt_id', pa.string())]
        + [(c, pa.float64()) for c in tables.label_columns(self.job.label_set.labels)]
        + [(LABEL_MASS, pa.float64())]
      )
      return pa.Table.from_pylist(rows, schema=schema)
    columns = {
      name: [r[name] for r in rows]
      for name in ('utt_id', 'rater', 'source', 'label', 'weight', 'text', 'prompt_id')
    }
    columns['vote_index'] = pa.array([r['vote_index'] for r in rows], pa.int32())
    columns['valid'] = pa.array([r['valid'] for r in rows], pa.bool_())
    return tables.votes_table(columns)


def _shard_rows(utterances: pa.Table, shard: int, shard_size: int) -> int:
  return min(shard_size, utterances.num_rows - shard * shard_size)


def _part_path(shard_dir: str, shard: int, ext: str = '.parquet') -> str:
  return os.path.join(shard_dir, f'part-{shard:05d}{ext}')


def _claim(shard_dir: str, fingerprint: dict) -> None:
  """Records the job in ``shard_dir`` or checks that the shards there belong to the same job."""
  path = os.path.join(shard_dir, JOB_FILE)
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      recorded = json.load(f)
    if recorded != fingerprint:
      differing = sorted(k for k in set(recorded) | set(fingerprint) if recorded.get(k) != fingerprint.get(k))
      raise InputError(
        f'the shards here belong to a different job (differing: {differing}); '
        'use a new out_dir or remove the shards',
        path=path,
      )
    return
  _write_json(path, fingerprint)


def _skipped_total(shard_dir: str, n_shards: int) -> SkipCounter:
  total = SkipCounter()
  for shard in range(n_shards):
    path = _part_path(shard_dir, shard, '.json')
    if os.path.exists(_part_path(shard_dir, shard)) and os.path.exists(path):
      with open(path, encoding='utf-8') as f:
        record = json.load(f)
      counter = SkipCounter()
      counter.counts.update(record['skipped'])
      counter.examples.extend(record['examples'])
      total.merge(counter)
  return total


def _write_json(path: str, value) -> None:
  """Writes JSON atomically (temp file + rename)."""
  atomic.write_text(path, json.dumps(value, indent=2, sort_keys=True))
