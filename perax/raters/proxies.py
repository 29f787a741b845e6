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
shards ``process_index, process_index + process_count, ...``; process 0 holds the out_dir's lock and
merges once every process has written its shards (perax.core.rendezvous: processes may finish hours
apart, and an error in one process is raised in all of them, naming it). Randomness is keyed
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
from jax.sharding import Mesh

from perax.core import jsonio, locks, log, rendezvous, settings_record
from perax.core.errors import InputError, SkipCounter
from perax.core.progress import Progress
from perax.data import clips as clips_lib
from perax.data import labels as labels_lib
from perax.data import tables
from perax.models import loading, sharding
from perax.raters import prompts as prompts_lib
from perax.raters import sampler as sampler_lib
from perax.raters import shard_worker

STAGE = 'proxies'
MODES = ('sample', 'score')
SHARD_DIR = 'shards'
JOB_FILE = 'job.json'
# What the out_dir lock (perax.core.locks.locked_for_the_run: process 0 holds it) is called in errors.
LOCK_WHAT = 'proxies out_dir'
OUTPUT_FILES = {'sample': 'votes.parquet', 'score': 'scores.parquet'}
SKIPPED_FILE = 'skipped.parquet'
SKIPPED_SCHEMA = pa.schema([('utt_id', pa.string()), ('reason', pa.string()), ('message', pa.string())])
LABEL_MASS, CLIP_POLICY, WINDOWS = shard_worker.LABEL_MASS, shard_worker.CLIP_POLICY, shard_worker.WINDOWS
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
    output: the merged table's path in process 0; None in the other processes of a multi-process
      run, and when shards are still missing.
    shards_done: shards finished by this run (not counting those found done).
    rows: rows in the merged table (0 when not merged).
    skipped: utterances that were not rated, over all shards, by reason.
    compiles: jit compilations of the sampler's programs during this run (0 when this process had
      compiled every shape before).
    skipped_output: the skipped-items table (utt_id, reason, message), None where ``output`` is.
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
  # Before loading the model: a run into a busy out_dir fails at once.
  with locks.locked_for_the_run(out_dir, LOCK_WHAT):
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
      missing transcript for a transcript prompt, an ``out_dir`` holding shards of another job or in
      use by another run; in a multi-process run, every process raises when one does
      (perax.core.rendezvous).
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
  with locks.locked_for_the_run(out_dir, LOCK_WHAT):
    return _generate(job, utterances, out_dir, model, processor, mesh, batch_size)


def _generate(job, utterances, out_dir, model, processor, mesh, batch_size) -> ProxyResult:
  compiles_before = sampler_lib.compile_count()
  shard_dir = os.path.join(out_dir, SHARD_DIR)
  n_shards = -(-utterances.num_rows // job.shard_size)

  def my_shards() -> int:
    settings_record.claim(
      os.path.join(shard_dir, JOB_FILE), job.fingerprint(utterances), 'use a new out_dir or remove its shards'
    )
    return _write_shards(job, utterances, shard_dir, model, processor, mesh, batch_size)

  # Every process's shards are written (or every process raises) before process 0 merges.
  done_now = rendezvous.run_everywhere(f'{STAGE} shards', my_shards)
  skipped_items = _skipped_items(shard_dir, n_shards)
  result = ProxyResult(
    None, done_now, 0, _skip_counter(skipped_items), sampler_lib.compile_count() - compiles_before
  )

  def merge() -> None:
    if jax.process_index() == 0:
      _merge(job, out_dir, n_shards, skipped_items, result)

  # Process 0 merges; every process returns once the merged table is written (or raises with it).
  rendezvous.run_everywhere(f'{STAGE} merge', merge)
  _report_skipped(skipped_items, result.skipped_output)
  log.info(
    f'{result.compiles} compilations in this run (sampler compile count {sampler_lib.compile_count()})', STAGE
  )
  return result


def _merge(
  job: ProxyJob, out_dir: str, n_shards: int, skipped_items: list[dict], result: ProxyResult
) -> None:
  """Writes the merged table (the shards in manifest order) and the skipped table into ``result``."""
  shard_dir = os.path.join(out_dir, SHARD_DIR)
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


def _write_shards(job, utterances, shard_dir, model, processor, mesh, batch_size) -> int:
  """Writes this process's missing shards (``process_index, process_index + process_count, ...``);
  returns how many it wrote."""
  worker = shard_worker.ShardWorker(job, model, processor, batch_size, mesh)
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
  return done_now


def _report_skipped(items: list[dict], path: str | None) -> None:
  if not items:
    log.info('skipped 0 utterances', STAGE)
    return
  counter = _skip_counter(items)
  reasons = '; '.join(f'{n} x {r}' for r, n in counter.counts.most_common())
  names = ', '.join(item['utt_id'] for item in items[:10]) + (', ...' if len(items) > 10 else '')
  where = f'; all listed in {path}' if path else ''
  noun = 'utterance' if len(items) == 1 else 'utterances'
  log.warning(f'skipped {len(items)} {noun} ({reasons}): {names}{where}', STAGE)


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
