"""Two-process train.py and evaluate.py runs (JAX's distributed runtime, gloo on CPU, 4 devices each)
against one process on the same global mesh of 8 devices: equal losses and dev metrics, one metrics
file written once, one checkpoint holding both processes' data-iterator positions, and equal
evaluation metrics, the balanced set's padded last batch included (issue 13, item 5)."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from perax.models import tiny
from perax.train import config as config_lib
from perax.train import data as data_lib
from perax.train import loop

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 2
RTOL = 1e-5


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _command(inputs: pathlib.Path, workdir: pathlib.Path, launcher: str = 'train.py') -> list[str]:
  """The launcher's command line; the runs share a compilation cache, so evaluate.py reuses the
  prediction step that training's dev evaluation compiled."""
  data = inputs / data_lib.DATA_DIRNAME
  return [
    sys.executable,
    str(REPO / 'launch' / launcher),
    f'--config={REPO / "configs" / "demo.py"}',
    f'--config.data.utterances={data / data_lib.UTTERANCES_FILE}',
    f'--config.data.distributions={data / data_lib.DISTRIBUTIONS_FILE}',
    f'--config.model.checkpoint={inputs / "tiny"}',
    '--config.model.compute_dtype=float32',
    f'--config.total_steps={STEPS}',
    f'--config.checkpoint_every={STEPS}',
    '--config.warmup_steps=1',
    f'--compilation_cache_dir={inputs / "jax_cache"}',
    f'--workdir={workdir}',
  ]


def _env(devices: int) -> dict:
  return {
    **os.environ,
    'PYTHONPATH': str(REPO),
    'JAX_PLATFORMS': 'cpu',
    'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}',
  }


def _jsonl(path: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """One process on 8 devices and two processes on 4 each, started together over the same inputs."""
  root = tmp_path_factory.mktemp('multiprocess')
  inputs = root / 'inputs'
  data = config_lib.default_config().data
  data.corpus, data.label_set = 'demo', 'demo'
  data_lib.load_run_data(data, str(inputs), seed=0)
  tiny.make_tiny_checkpoint(inputs / 'tiny', seed=0)
  one, two = root / 'one', root / 'two'
  outputs = {}
  for launcher in ('train.py', 'evaluate.py'):
    port = _free_port()
    procs = [
      subprocess.Popen(
        _command(inputs, one, launcher), env=_env(8), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
      )
    ]
    for rank in range(2):
      distributed = [f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2', f'--process_id={rank}']
      procs.append(
        subprocess.Popen(
          _command(inputs, two, launcher) + distributed,
          env=_env(4),
          stdout=subprocess.PIPE,
          stderr=subprocess.STDOUT,
        )
      )
    outputs[launcher] = []
    try:
      for proc in procs:
        out, _ = proc.communicate(timeout=900)
        outputs[launcher].append(out.decode(errors='replace'))
    finally:
      for proc in procs:
        if proc.poll() is None:
          proc.kill()
    for proc, out in zip(procs, outputs[launcher]):
      assert proc.returncode == 0, out[-4000:]
  return one, two, outputs


def test_two_processes_train_like_one_on_the_same_global_mesh(runs):
  one, two, outputs = runs
  single, double = _jsonl(one / loop.METRICS_FILE), _jsonl(two / loop.METRICS_FILE)
  # Written once (by process 0), one line per step.
  assert [r['step'] for r in single] == [r['step'] for r in double] == list(range(1, STEPS + 1))
  for key in ('loss', 'grad_norm', 'examples'):
    np.testing.assert_allclose([r[key] for r in double], [r[key] for r in single], rtol=RTOL, err_msg=key)
  assert loop.loss_history(str(two)) == {r['step']: r['loss'] for r in double}
  dev_single, dev_double = _jsonl(one / loop.DEV_METRICS_FILE), _jsonl(two / loop.DEV_METRICS_FILE)
  assert len(dev_double) == 1 and dev_double[0]['n'] == dev_single[0]['n']
  for key in ('js_divergence', 'kl', 'cosine'):
    np.testing.assert_allclose(dev_double[0][key], dev_single[0][key], rtol=RTOL, err_msg=key)
  # Both processes ran every step and saved one checkpoint together.
  single_out, rank0_out, rank1_out = outputs['train.py']
  assert f'trained steps 1..{STEPS}' in single_out and f'trained steps 1..{STEPS}' in rank0_out
  assert 'trained steps' not in rank1_out  # the result line is printed once
  data_states = sorted(p.name for p in (two / 'checkpoints' / str(STEPS) / 'data').glob('process_*.json'))
  assert data_states == ['process_0-of-2.json', 'process_1-of-2.json']


def test_two_processes_evaluate_like_one(runs):
  one, two, _ = runs
  for name in ('test', 'test_balanced'):
    single = json.loads((one / f'eval_{STEPS}' / f'metrics_{name}.json').read_text())
    double = json.loads((two / f'eval_{STEPS}' / f'metrics_{name}.json').read_text())
    assert double['n'] == single['n'] > 0
    for level, metrics in single['metrics'].items():
      assert double['metrics'][level]['n'] == metrics['n'], (name, level)
      for key in ('js_divergence', 'kl'):
        if metrics[key] is not None:
          np.testing.assert_allclose(
            double['metrics'][level][key], metrics[key], rtol=RTOL, err_msg=(name, level)
          )
