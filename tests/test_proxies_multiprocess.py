"""generate_proxies.py with two real processes (JAX's distributed runtime on CPU, 2 devices each)
against one process (issue 13, item 5).

Five utterances in shards of one: process 0 owns shards 0, 2, 4 and process 1 shards 1, 3, so the
processes finish at different times. The runs, in order (each launch costs seconds of imports, so
one two-process run both fails and does most of the work):

1. one process writes the reference votes;
2. two processes, while another job holds the out_dir's lock: both refuse, before loading the model;
3. two processes with --strict_audio and u3's file unreadable: process 0 writes shards 0, 2, 4,
   process 1 writes shard 1, then fails on u3; both exit with code 2 naming u3;
4. the same two processes again, u3 restored: only shard 3 is computed, and the merged table is
   exactly the one-process table.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from perax.core import rendezvous
from perax.core.errors import InputError
from perax.core.locks import RunLock
from perax.data import audio, tables
from perax.models.tiny import make_tiny_checkpoint
from perax.raters import proxies

REPO = pathlib.Path(__file__).resolve().parents[1]
SECONDS = (0.6, 1.4, 0.9, 1.2, 0.7)  # all in the 2 s feature bucket: one compilation per program
SHARD_SIZE = 1
FAILING_SHARD = 3  # process 1's second shard


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _env() -> dict:
  return {
    **os.environ,
    'PYTHONPATH': str(REPO),
    'JAX_PLATFORMS': 'cpu',
    'XLA_FLAGS': '--xla_force_host_platform_device_count=2',
  }


def _gloo_available() -> bool:
  try:
    from jax._src.lib import _jax  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  return hasattr(jax.config, 'jax_cpu_collectives_implementation') and hasattr(
    _jax, 'make_gloo_tcp_collectives'
  )


class Inputs:
  """A tiny checkpoint, five clips and their manifest; :meth:`run` starts the launcher."""

  def __init__(self, root: pathlib.Path):
    self.root = root
    self.checkpoint = make_tiny_checkpoint(root / 'tiny', seed=5)
    rng = np.random.default_rng(0)
    rows = []
    for i, seconds in enumerate(SECONDS):
      path = root / 'wav' / f'u{i}.wav'
      audio.write_wav(path, 0.2 * rng.normal(size=int(seconds * 16000)), sr=16000)
      rows.append({'utt_id': f'u{i}', 'audio_path': str(path), 'transcript': f'words of u{i}'})
    self.manifest = root / 'utterances.parquet'
    tables.write_table(tables.utterances_table(rows), self.manifest)

  def command(self, out_dir: pathlib.Path, *extra: str) -> list[str]:
    return [
      sys.executable,
      str(REPO / 'launch' / 'generate_proxies.py'),
      f'--checkpoint={self.checkpoint}',
      f'--manifest={self.manifest}',
      f'--out_dir={out_dir}',
      '--label_set=iemocap4',
      '--prompt_ids=direct,listener',
      '--votes_per_utterance=3',
      '--max_new_tokens=4',
      '--seed=3',
      '--batch_size=2',
      f'--shard_size={SHARD_SIZE}',
      f'--compilation_cache_dir={self.root / "jax_cache"}',
      *extra,
    ]

  def run(self, out_dir: pathlib.Path, processes: int, *extra: str) -> list[tuple[int, str]]:
    """(exit code, output) of each process of one run, by process index."""
    port = _free_port()
    commands = [self.command(out_dir, *extra)]
    if processes > 1:
      commands = [
        self.command(
          out_dir,
          *extra,
          f'--coordinator_address=127.0.0.1:{port}',
          f'--num_processes={processes}',
          f'--process_id={rank}',
        )
        for rank in range(processes)
      ]
    procs = [
      subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
      for command in commands
    ]
    results = []
    try:
      for proc in procs:
        out, _ = proc.communicate(timeout=300)
        results.append((proc.returncode, out.decode(errors='replace')))
    finally:
      for proc in procs:
        if proc.poll() is None:
          proc.kill()
    return results


def _succeeded(results: list[tuple[int, str]]) -> list[str]:
  for code, out in results:
    assert code == 0, out[-4000:]
  return [out for _, out in results]


def _shard(out_dir: pathlib.Path, shard: int, ext: str = '.parquet') -> pathlib.Path:
  return out_dir / proxies.SHARD_DIR / f'part-{shard:05d}{ext}'


def _assert_same_table(path_a: pathlib.Path, path_b: pathlib.Path) -> None:
  """Equal schema and equal columns, row by row (NaN equals NaN: the vote table's empty dimensions)."""
  a, b = tables.read_table(path_a), tables.read_table(path_b)
  assert a.schema == b.schema
  assert a.num_rows == b.num_rows
  for name in a.column_names:
    np.testing.assert_array_equal(
      a[name].to_numpy(zero_copy_only=False), b[name].to_numpy(zero_copy_only=False), err_msg=name
    )


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """The four runs of the module docstring, with each shard's modification time after run 3."""
  if not _gloo_available():
    pytest.skip('this jaxlib has no gloo CPU collectives for jax.distributed on CPU')
  inputs = Inputs(tmp_path_factory.mktemp('proxies_multiprocess'))
  one, two = inputs.root / 'one', inputs.root / 'two'
  single = _succeeded(inputs.run(one, 1))
  with RunLock(two):  # another job holds the out_dir
    locked = inputs.run(two, 2)
  wav = inputs.root / 'wav' / f'u{FAILING_SHARD}.wav'
  good = wav.read_bytes()
  wav.write_bytes(b'not a wav file')
  try:
    failed = inputs.run(two, 2, '--strict_audio')
  finally:
    wav.write_bytes(good)
  written = {p.name: p.stat().st_mtime_ns for p in (two / proxies.SHARD_DIR).glob('part-*.parquet')}
  resumed = _succeeded(inputs.run(two, 2))
  return dict(
    inputs=inputs,
    one=one,
    two=two,
    single=single,
    locked=locked,
    failed=failed,
    written=written,
    resumed=resumed,
  )


def test_two_processes_write_exactly_the_votes_of_one(runs):
  one, two = runs['one'], runs['two']
  votes = one / proxies.OUTPUT_FILES['sample']
  _assert_same_table(two / proxies.OUTPUT_FILES['sample'], votes)
  _assert_same_table(two / proxies.SKIPPED_FILE, one / proxies.SKIPPED_FILE)
  table = tables.read_table(votes)
  assert table.num_rows == len(SECONDS) * 2 * 3  # utterances x prompts x votes
  assert list(dict.fromkeys(tables.column(table, 'utt_id'))) == [f'u{i}' for i in range(len(SECONDS))]
  # The result line is printed once, by process 0.
  rank0, rank1 = runs['resumed']
  assert f'{two / proxies.OUTPUT_FILES["sample"]}: {table.num_rows} rows' in rank0
  assert 'rows; skipped' not in rank1


def test_an_out_dir_in_use_is_refused_by_every_process(runs):
  for code, out in runs['locked']:
    assert code == 2, out[-4000:]
    assert 'in use by another perax process' in out
    assert 'compute dtype' not in out  # refused before the model was loaded


def test_an_error_in_one_process_is_raised_in_both(runs):
  (code0, out0), (code1, out1) = runs['failed']
  assert code1 == 2 and "item 'u3'" in out1, out1[-4000:]
  assert code0 == 2, out0[-4000:]
  assert 'process 1 of 2 failed' in out0 and "item 'u3'" in out0
  # Each process wrote its shards up to the failure; nothing was merged.
  assert sorted(runs['written']) == [_shard(runs['two'], s).name for s in (0, 1, 2, 4)]
  assert 'proxies (sample): 3/3 utt' in out0


def test_a_rerun_computes_only_the_missing_shard(runs):
  two = runs['two']
  now = {p.name: p.stat().st_mtime_ns for p in (two / proxies.SHARD_DIR).glob('part-*.parquet')}
  assert {name: now[name] for name in runs['written']} == runs['written']  # not recomputed
  assert sorted(now) == [_shard(two, s).name for s in range(len(SECONDS))]
  rank0, rank1 = runs['resumed']
  assert '0 compilations in this run' in rank0  # process 0 found all its shards done
  assert 'proxies (sample): 2/2 utt' in rank1


class FakeClient:
  """The coordination service's key-value store and barrier as process ``me`` of two sees them, with
  process ``other``'s status already posted."""

  def __init__(self, other_status: dict):
    self.store = {}
    self.other_status = other_status
    self.barriers = []

  def key_value_set(self, key, value):
    assert key not in self.store  # the service refuses to overwrite: keys are numbered per call
    self.store[key] = value
    self.store[key[: key.rindex('/')] + '/1'] = json.dumps(self.other_status)

  def wait_at_barrier(self, name, timeout_ms):
    self.barriers.append((name, timeout_ms))

  def blocking_key_value_get(self, key, timeout_ms):
    return self.store[key]


@pytest.fixture
def process_0_of_2(monkeypatch):
  """rendezvous as process 0 of a two-process run; ``connect(status)`` installs process 1's status."""
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  monkeypatch.setattr(jax, 'process_index', lambda: 0)

  def connect(other_status):
    client = FakeClient(other_status)
    monkeypatch.setattr(rendezvous, '_client', lambda: client)
    return client

  return connect


def test_rendezvous_waits_on_the_coordination_service_for_days(process_0_of_2):
  client = process_0_of_2({'failed': False})
  assert rendezvous.run_everywhere('step', lambda: 'mine') == 'mine'
  assert rendezvous.run_everywhere('step', lambda: 'again') == 'again'  # numbered: no key reused
  (first, wait), (second, _) = client.barriers
  assert first != second and first.startswith('perax/rendezvous/step/')
  # Not a device collective (gloo gives up on a peer after 30 s): a barrier that waits for days.
  assert wait >= 24 * 3600 * 1000


def test_rendezvous_raises_a_peers_input_error_naming_it(process_0_of_2):
  process_0_of_2({'failed': True, 'input_error': True, 'message': "x.wav, item 'u3': cannot read audio"})
  ran = []
  with pytest.raises(InputError, match=r"step: process 1 of 2 failed: x.wav, item 'u3': cannot read audio"):
    rendezvous.run_everywhere('step', lambda: ran.append(1))
  assert ran == [1]  # this process's step ran to its end first


def test_rendezvous_raises_other_peer_failures_as_peer_failed(process_0_of_2):
  process_0_of_2({'failed': True, 'input_error': False, 'message': 'out of memory'})
  with pytest.raises(rendezvous.PeerFailed, match='process 1 of 2 failed: out of memory'):
    rendezvous.run_everywhere('step', lambda: None)


def test_rendezvous_posts_its_own_failure_before_raising_it(process_0_of_2):
  client = process_0_of_2({'failed': False})

  def step():
    raise InputError('bad row', path='m.csv', line=3)

  with pytest.raises(InputError, match='bad row'):
    rendezvous.run_everywhere('step', step)
  posted = [json.loads(v) for k, v in client.store.items() if k.endswith('/0')]
  assert posted == [{'failed': True, 'input_error': True, 'message': 'm.csv:3: bad row'}]
  assert len(client.barriers) == 1  # it reached the barrier, so its peers are not left waiting


def test_one_process_runs_the_step_alone():
  assert jax.process_count() == 1
  assert rendezvous.run_everywhere('step', lambda: 7) == 7
