"""Synthetic Perceptual Proxies in bulk: votes (or exact label scores) for a manifest's utterances.

Output, under ``out_dir``:

- ``votes.parquet`` (mode ``sample``): one row per vote in perax.data.tables.VOTE_SCHEMA plus
  ``prompt_id``, ``vote_index`` (int32), ``valid`` (the parsed label is in the label set, merges
  applied), ``clip_policy`` and ``windows`` (below); ``rater = '<model>|<prompt_id>'``,
  ``source = 'synthetic'``, ``weight = 1``, ``text`` the decoded answer and ``label`` its parse
  (perax.data.labels.parse_label; INVALID when unparseable);
- ``scores.parquet`` (mode ``score``): utt_id, prompt_id, ``p_<label>`` (the answer distribution
  normalised over the label set), ``label_mass`` (the probability of answering with any label),
  ``clip_policy`` and ``windows``;
- ``skipped.parquet``: every utterance that was not rated (utt_id, reason, message): unreadable,
  NaN/Inf, empty or too short audio (perax.data.clips). Such audio never gets rows (no NaN scores);
- ``shards/``: the resumable work. The manifest is cut into shards of ``shard_size`` consecutive
  utterances; shard ``s`` is done once ``shards/part-sssss.parquet`` exists (written atomically
  after its sidecar ``part-sssss.json``, which lists the utterances it skipped).
  ``shards/job.json`` records the job's settings (perax.core.settings_record); a rerun with the same
  job skips finished shards, so a job killed at any moment completes with no lost and no duplicated
  rows. The final tables are the shards concatenated in manifest order.

Clips over 30 s follow ``ProxyJob.long_clips`` (perax.data.clips): 'truncate' rates their first 30 s;
'split' rates every window and pools the windows' votes (``vote_index = window * K + k``: all votes
are kept) or averages the windows' label distributions (and label mass) weighted by their durations.
``clip_policy`` is 'whole', 'truncated' or 'split', ``windows`` the number of windows rated; the run
warns with the counts.

Work is data-parallel over a mesh of this process's devices (batches split over 'data' x 'fsdp',
weights placed by the model's logical-axis rules, perax.raters.sampler) and each JAX process takes
shards ``process_index, process_index + process_count, ...``; process 0 merges. Randomness is keyed
by (seed, prompt_id, utt_id, vote index), and window ``w > 0`` of a split clip by
``'<utt_id>#window<w>'``, so results do not depend on batch size, shard size, process count or
resumption.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import jax
import numpy as np
import pyarrow as pa
import soundfile
from jax.sharding import Mesh

from perax.core import jsonio, log, settings_record
from perax.core.errors import InputError, SkipCounter
from perax.core.locks import RunLock
from perax.core.progress import Progress
from perax.data import audio as audio_io
from perax.data import clips as clips_lib
from perax.data import features as mel
from perax.data import labels as labels_lib
from perax.data import tables
from perax.models import loading, sharding
from perax.raters import prompts as prompts_lib
from perax.raters import sampler as sampler_lib

STAGE = 'proxies'
MODES = ('sample', 'score')
SHARD_DIR = 'shards'
JOB_FILE = 'job.json'
OUTPUT_FILES = {'sample': 'votes.parquet', 'score': 'scores.parquet'}
SKIPPED_FILE = 'skipped.parquet'
SKIPPED_SCHEMA = pa.schema([('utt_id', pa.string()), ('reason', pa.string()), ('message', pa.string())])
LABEL_MASS = 'label_mass'
CLIP_POLICY = 'clip_policy'
WINDOWS = 'windows'
UNREADABLE = 'unreadable audio'


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
    batch_size: clips per batch (rounded up to a multiple of the mesh's data x fsdp devices).
    shard_size: utterances per output shard.
    lenient_audio: count and skip utterances whose audio cannot be rated (else raise).
    long_clips: what happens to clips over 30 s, one of perax.data.clips.POLICIES: 'truncate'
      (rate the first 30 s) or 'split' (rate 30 s windows and aggregate; module docstring).
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
  long_clips: str = 'truncate'

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f'mode must be one of {MODES}, got {self.mode!r}')
    if self.long_clips not in clips_lib.POLICIES:
      raise ValueError(f'long_clips must be one of {clips_lib.POLICIES}, got {self.long_clips!r}')
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
      'long_clips': self.long_clips,
      'utterances': utterances.num_rows,
      'utt_ids_sha256': digest,
      **({k: getattr(self, k) for k in sampling} if self.mode == 'sample' else {}),
    }


@dataclasses.dataclass
class ProxyResult:
  """What a run did.

  Attributes:
    output: the merged table's path, or None when another process's shards are still missing.
    shards_done: shards finished by this run (not counting those found done).
    rows: rows in the merged table (0 when not merged).
    skipped: utterances that were not rated, over all shards, by reason.
    compiles: jit compilations of the sampler's programs during this run (0 when this process had
      compiled every shape before).
    skipped_output: the skipped-items table (utt_id, reason, message), None when not merged.
    long_clips: utterances over 30 s in the merged table, by clip_policy ('truncated' or 'split').
  """

  output: str | None
  shards_done: int
  rows: int
  skipped: SkipCounter
  compiles: int
  skipped_output: str | None = None
  long_clips: dict[str, int] = dataclasses.field(default_factory=dict)


def model_name(checkpoint: str) -> str:
  """The rater's model name for a checkpoint directory: its base name."""
  return os.path.basename(os.path.normpath(checkpoint))


def default_dtype(backend: str | None = None) -> str:
  """The compute dtype for a JAX backend: 'bfloat16' on GPU and TPU, 'float32' on CPU (HF parity)."""
  backend = jax.default_backend() if backend is None else backend
  return 'float32' if backend == 'cpu' else 'bfloat16'


def local_mesh(shape: tuple[int, int, int] | None = None) -> Mesh:
  """A mesh over this process's devices: one 'data' axis, or ('data', 'fsdp', 'tensor') of ``shape``
  (one size may be -1 for the remaining devices)."""
  if shape is None:
    return Mesh(np.asarray(jax.local_devices()), ('data',))
  return sharding.make_mesh(*shape, devices=jax.local_devices())


def generate_from_files(
  job: ProxyJob,
  checkpoint: str,
  manifest: str,
  out_dir: str,
  *,
  dtype: str | None = None,
  mesh_shape: tuple[int, int, int] | None = None,
) -> ProxyResult:
  """Loads the model (placed on the mesh) and the manifest, then runs :func:`generate`.

  Args:
    job: what to generate.
    checkpoint: a converted perax directory or an HF Qwen2-Audio directory.
    manifest: utterances table (Parquet, CSV or JSONL).
    out_dir: output directory.
    dtype: compute dtype name ('float32' or 'bfloat16'); :func:`default_dtype` when None.
    mesh_shape: (data, fsdp, tensor) sizes over the local devices; one 'data' axis when None.
  """
  utterances = tables.read_utterances(manifest)
  mesh = local_mesh(mesh_shape)
  dtype = dtype or default_dtype()
  log.info(f'compute dtype {dtype}, mesh {dict(mesh.shape)}', stage=STAGE)
  model, _, processor = loading.load_model(checkpoint, dtype=dtype, mesh=mesh)
  return generate(job, utterances, out_dir, model, processor, mesh=mesh)


def generate(
  job: ProxyJob,
  utterances: pa.Table,
  out_dir: str,
  model,
  processor,
  *,
  mesh: Mesh | None = None,
) -> ProxyResult:
  """Generates the job's votes or scores for ``utterances`` into ``out_dir`` (resumable).

  Progress, warnings (skipped audio, long clips) and the number of compilations go to perax.core.log.

  Args:
    job: what to generate.
    utterances: a manifest in perax.data.tables.UTTERANCE_SCHEMA (audio_path, start_s, end_s, transcript
      are used).
    out_dir: output directory (see the module docstring).
    model: a perax Qwen2AudioForConditionalGeneration.
    processor: the checkpoint's HF processor (chat template, tokenizer).
    mesh: the mesh to run on (perax.raters.sampler.Sampler); :func:`local_mesh` when None.

  Returns:
    A :class:`ProxyResult`.

  Raises:
    InputError: an empty manifest, audio that cannot be rated when not ``job.lenient_audio``, a
      missing transcript for a transcript prompt, or an ``out_dir`` holding shards of another job.
  """
  if not utterances.num_rows:
    raise InputError('the manifest has no utterances')
  mesh = local_mesh() if mesh is None else mesh
  devices = sampler_lib.batch_devices(mesh)
  batch_size = -(-job.batch_size // devices) * devices
  if batch_size != job.batch_size:
    log.info(
      f'batch size {job.batch_size} rounded up to {batch_size}, a multiple of {devices} devices', STAGE
    )
  lock = RunLock(out_dir, 'proxies out_dir') if jax.process_count() == 1 else None
  if lock is not None:
    lock.acquire()
  try:
    return _generate(job, utterances, out_dir, model, processor, mesh, batch_size)
  finally:
    if lock is not None:
      lock.release()


def _generate(job, utterances, out_dir, model, processor, mesh, batch_size) -> ProxyResult:
  compiles_before = sampler_lib.compile_count()
  shard_dir = os.path.join(out_dir, SHARD_DIR)
  settings_record.claim(
    os.path.join(shard_dir, JOB_FILE), job.fingerprint(utterances), 'use a new out_dir or remove its shards'
  )
  worker = _Worker(job, model, processor, batch_size, mesh)

  n_shards = -(-utterances.num_rows // job.shard_size)
  mine = list(range(jax.process_index(), n_shards, jax.process_count()))
  progress = Progress(
    total=sum(_shard_rows(utterances, s, job.shard_size) for s in mine),
    unit='utt',
    what=f'proxies ({job.mode})',
  )
  done_now = 0
  for shard in mine:
    rows = _shard_rows(utterances, shard, job.shard_size)
    if os.path.exists(_part_path(shard_dir, shard)):
      progress.update(rows, resumed=True)
      continue
    part = utterances.slice(shard * job.shard_size, rows)
    table, skipped_items = worker.run(part, progress)
    jsonio.write_json(_part_path(shard_dir, shard, '.json'), {'utterances': rows, 'skipped': skipped_items})
    tables.write_table(table, _part_path(shard_dir, shard))
    done_now += 1
  progress.close()

  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    multihost_utils.sync_global_devices('perax.raters.proxies shards written')
  skipped_items = _skipped_items(shard_dir, n_shards)
  result = ProxyResult(
    None, done_now, 0, _skip_counter(skipped_items), sampler_lib.compile_count() - compiles_before
  )
  if jax.process_index() == 0:
    missing = [s for s in range(n_shards) if not os.path.exists(_part_path(shard_dir, s))]
    if missing:
      log.warning(f'{len(missing)} of {n_shards} shards still missing; rerun to complete', STAGE)
    else:
      merged = tables.concat([tables.read_table(_part_path(shard_dir, s)) for s in range(n_shards)])
      result.output = tables.write_table(merged, os.path.join(out_dir, OUTPUT_FILES[job.mode]))
      result.rows = merged.num_rows
      skipped_table = pa.Table.from_pylist(skipped_items, schema=SKIPPED_SCHEMA)
      result.skipped_output = tables.write_table(skipped_table, os.path.join(out_dir, SKIPPED_FILE))
      result.long_clips = _long_clips(merged)
      log.info(f'wrote {result.rows} rows to {result.output}', STAGE)
      _report_long_clips(result.long_clips, job.long_clips)
  _report_skipped(skipped_items, result.skipped_output)
  log.info(
    f'{result.compiles} compilations in this run (sampler compile count {sampler_lib.compile_count()})', STAGE
  )
  return result


def _report_skipped(items: list[dict], path: str | None) -> None:
  if not items:
    log.info('skipped 0 utterances', STAGE)
    return
  counter = _skip_counter(items)
  reasons = '; '.join(f'{n} x {r}' for r, n in counter.counts.most_common())
  names = ', '.join(item['utt_id'] for item in items[:10]) + (', ...' if len(items) > 10 else '')
  where = f'; all listed in {path}' if path else ''
  log.warning(f'skipped {len(items)} utterances ({reasons}): {names}{where}', STAGE)


def _report_long_clips(counts: dict[str, int], policy: str) -> None:
  if counts:
    done = ', '.join(f'{n} {what}' for what, n in sorted(counts.items()))
    log.warning(f'clips over 30 s (long_clips={policy}): {done}; marked in the {CLIP_POLICY!r} column', STAGE)


def _long_clips(table: pa.Table) -> dict[str, int]:
  """Utterances over 30 s in a merged table, by clip_policy."""
  counts: dict[str, int] = {}
  seen = set()
  for utt_id, policy in zip(tables.column(table, 'utt_id'), tables.column(table, CLIP_POLICY)):
    if policy != clips_lib.WHOLE and utt_id not in seen:
      seen.add(utt_id)
      counts[policy] = counts.get(policy, 0) + 1
  return counts


def _skip_counter(items: list[dict]) -> SkipCounter:
  counter = SkipCounter()
  for item in items:
    counter.skip(item['message'], reason=item['reason'])
  return counter


@dataclasses.dataclass(frozen=True)
class _Window:
  """One window of one utterance, as rated (a whole clip is its only window)."""

  row: int  # the utterance's row in the shard
  index: int  # window number within the clip
  waveform: np.ndarray
  key: str  # keys the randomness: the utt_id for window 0


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

  def run(self, part: pa.Table, progress: Progress) -> tuple[pa.Table, list[dict]]:
    """The output rows of ``part`` in manifest order, and the utterances skipped (utt_id, reason,
    message) in manifest order."""
    skipped: list[dict] = []
    clips = self._load_clips(part, skipped)
    progress.update(len(skipped))
    utt_ids = tables.column(part, 'utt_id')
    transcripts = tables.column(part, 'transcript')
    windows = [
      _Window(row, w, waveform, str(utt_ids[row]) if w == 0 else f'{utt_ids[row]}#window{w}')
      for row, clip in clips.items()
      for w, waveform in enumerate(clip.windows)
    ]
    results: dict[tuple[int, int, int], object] = {}  # (row, prompt number, window) -> payload
    buckets: dict[int, list[_Window]] = {}
    for window in windows:
      buckets.setdefault(mel.bucket_for(len(window.waveform)), []).append(window)
    for bucket_seconds, members in sorted(buckets.items()):
      for start in range(0, len(members), self.batch_size):
        batch = members[start : start + self.batch_size]
        padded = sampler_lib.pad_rows(batch, self.batch_size)
        features, lengths = mel.batch_features([w.waveform for w in padded], bucket_seconds)
        encoded = self.sampler.encode(features, lengths)
        for number, prompt in enumerate(self.job.prompts):
          prompt_ids = [
            self._prompt_ids(prompt, utt_ids[w.row], transcripts[w.row], encoded.num_tokens[i])
            for i, w in enumerate(padded)
          ]
          keys = [w.key for w in padded]
          if self.job.mode == 'score':
            out = self._scores(encoded, prompt_ids)
          else:
            out = self._votes(encoded, prompt_ids, keys, prompt)
          for window, payload in zip(batch, out):
            results[window.row, number, window.index] = payload
        progress.update(sum(w.index == len(clips[w.row].windows) - 1 for w in batch))
    rows = []
    for row, clip in sorted(clips.items()):
      for number, prompt in enumerate(self.job.prompts):
        payloads = [results[row, number, w] for w in range(len(clip.windows))]
        rows.extend(self._rows(str(utt_ids[row]), prompt, clip, payloads))
    return self._table(rows), skipped

  def _load_clips(self, part: pa.Table, skipped: list[dict]) -> dict[int, clips_lib.Clip]:
    """Clips by row (16 kHz, the long-clip policy applied); audio that cannot be rated is listed in
    ``skipped`` or raises."""
    clips = {}
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
        clips[row] = clips_lib.prepare(waveform, self.job.long_clips, path=path, item=utt_id)
      except InputError as e:
        if path is not None and _has_no_frames(path):  # load_audio reports it as an empty segment
          e = InputError(clips_lib.EMPTY, path=path, item=utt_id)
        error = e if e.item is not None else InputError(e.reason, path=e.path or path, item=utt_id)
        if not self.job.lenient_audio:
          raise error from e
        skipped.append({'utt_id': str(utt_id), 'reason': clips_lib.skip_reason(error), 'message': str(error)})
    return clips

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

  def _votes(self, encoded, prompt_ids, keys, prompt) -> list[list[str]]:
    """Each batch row's K decoded answers."""
    tokens = self.sampler.sample(
      encoded,
      prompt_ids,
      self.config,
      seed=self.job.seed,
      utt_ids=keys,
      prompt_id=prompt.prompt_id,
      label_tokens=self.label_tokens,
    )
    return self.sampler.texts(tokens, self.job.stop_strings)

  def _scores(self, encoded, prompt_ids) -> list[tuple[np.ndarray, float]]:
    """Each batch row's (distribution over the label set [C], label mass)."""
    logp = self.sampler.score(encoded, prompt_ids, self.label_tokens)
    probs = sampler_lib.normalise(logp)
    mass = np.exp(logp.astype(np.float64)).sum(axis=-1)
    return list(zip(probs, mass))

  def _rows(self, utt_id: str, prompt, clip: clips_lib.Clip, payloads: list) -> list[dict]:
    """An utterance's output rows under one prompt, its windows aggregated."""
    marks = {CLIP_POLICY: clip.policy, WINDOWS: len(clip.windows)}
    if self.job.mode == 'score':
      probs, mass = clips_lib.aggregate_scores(
        np.stack([p for p, _ in payloads]), np.asarray([m for _, m in payloads]), clip.weights
      )
      columns = tables.label_columns(self.job.label_set.labels)
      return [
        {
          'utt_id': utt_id,
          'prompt_id': prompt.prompt_id,
          **dict(zip(columns, map(float, probs))),
          LABEL_MASS: mass,
        }
        | marks
      ]
    texts = [text for window_texts in payloads for text in window_texts]  # vote_index = w * K + k
    parsed = [labels_lib.parse_label(text) for text in texts]
    valid = self.job.label_set.index(parsed) >= 0
    rater = f'{self.job.model_name}|{prompt.prompt_id}'
    return [
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
      | marks
      for k, (text, label, ok) in enumerate(zip(texts, parsed, valid))
    ]

  def _table(self, rows: list[dict]) -> pa.Table:
    marks = [(CLIP_POLICY, pa.string()), (WINDOWS, pa.int32())]
    if self.job.mode == 'score':
      schema = pa.schema(
        [('utt_id', pa.string()), ('prompt_id', pa.string())]
        + [(c, pa.float64()) for c in tables.label_columns(self.job.label_set.labels)]
        + [(LABEL_MASS, pa.float64())]
        + marks
      )
      return pa.Table.from_pylist(rows, schema=schema)
    columns = {
      name: [r[name] for r in rows]
      for name in ('utt_id', 'rater', 'source', 'label', 'weight', 'text', 'prompt_id')
    }
    columns['vote_index'] = pa.array([r['vote_index'] for r in rows], pa.int32())
    columns['valid'] = pa.array([r['valid'] for r in rows], pa.bool_())
    for name, kind in marks:
      columns[name] = pa.array([r[name] for r in rows], kind)
    return tables.votes_table(columns)


def _has_no_frames(path: str) -> bool:
  """The file is readable audio holding 0 frames (e.g. a wav with only a header)."""
  try:
    return soundfile.info(str(path)).frames == 0
  except (soundfile.LibsndfileError, RuntimeError, OSError):
    return False


def _shard_rows(utterances: pa.Table, shard: int, shard_size: int) -> int:
  return min(shard_size, utterances.num_rows - shard * shard_size)


def _part_path(shard_dir: str, shard: int, ext: str = '.parquet') -> str:
  return os.path.join(shard_dir, f'part-{shard:05d}{ext}')


def _skipped_items(shard_dir: str, n_shards: int) -> list[dict]:
  """The skipped utterances of every finished shard, in manifest order."""
  items = []
  for shard in range(n_shards):
    path = _part_path(shard_dir, shard, '.json')
    if os.path.exists(_part_path(shard_dir, shard)) and os.path.exists(path):
      items.extend(jsonio.read_json(path)['skipped'])
  return items
