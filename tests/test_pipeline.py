"""The main job end to end on the demo corpus: every stage, reuse by key, the report, the launcher."""

import csv
import dataclasses
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys

import log_lines
import numpy as np
import pytest
from chromium_check import rendered_body

from perax import pipeline
from perax.core import jsonio
from perax.data import tables

SMALL = dict(votes_per_utterance=2, max_new_tokens=2, train_steps=6, bootstrap=20, sparse_k=(1, 3), repeats=1)
SMALL_FLAGS = [
  '--votes_per_utterance=2',
  '--max_new_tokens=2',
  '--train_steps=6',
  '--bootstrap=20',
  '--sparse_k=1,3',
  '--repeats=1',
]
ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_logged(config):
  """Runs the pipeline; returns its outputs and the log lines it wrote ('[stage] message')."""
  with log_lines.captured() as lines:
    return pipeline.run_pipeline(config), lines


def ran(lines):
  return [line.split(']')[0][1:] for line in lines if line.endswith('] running')]


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """One small pipeline run on the demo corpus, and the lines it logged."""
  config = pipeline.PipelineConfig(out_dir=str(tmp_path_factory.mktemp('pipeline') / 'run'), **SMALL)
  outputs, lines = run_logged(config)
  return config, outputs, lines


def test_every_stage_ran_and_wrote_its_outputs(run):
  config, outputs, lines = run
  out = pathlib.Path(config.out_dir)
  assert ran(lines) == list(pipeline.STAGES)
  for stage in pipeline.STAGES:
    record = jsonio.read_json(out / 'stages' / f'{stage}.json')
    assert set(record) == {'key', 'outputs', 'digest', 'seconds'}
    assert not (out / 'stages' / f'{stage}.started.json').exists()
  for path in (
    outputs['proxies']['sample'],
    outputs['proxies']['score'],
    outputs['distributions']['human'],
    outputs['distributions']['combined'],
    outputs['augment']['train']['utterances'],
    outputs['augment']['eval_test']['utterances'],
  ):
    assert pathlib.Path(path).is_file(), path
  assert outputs['train']['final_step'] == SMALL['train_steps']
  assert outputs['train']['first_step'] == 1
  assert set(outputs['evaluate']['metrics']) == set(pipeline.REFERENCES)
  # The written balanced set carries human + proxy targets: scored against that reference only.
  assert set(outputs['evaluate']['metrics']['human']) == {'test'}
  assert set(outputs['evaluate']['metrics']['human+proxy']) == {'test', 'test_balanced'}


def test_evaluation_scores_the_balanced_set_the_augment_stage_wrote(run):
  _, outputs, _ = run
  written = tables.read_table(outputs['augment']['eval_test']['utterances'])
  (predictions,) = pathlib.Path(outputs['evaluate']['out_dir']).rglob('predictions_test_balanced.parquet')
  scored = tables.read_table(str(predictions))
  assert sorted(tables.column(scored, 'utt_id')) == sorted(tables.column(written, 'utt_id'))


def test_the_default_evaluation_is_against_human_votes_only(run):
  config, outputs, _ = run
  human = tables.read_table(outputs['distributions']['human'])
  utterances = tables.read_utterances(outputs['prepare']['utterances'])
  test_ids = set(tables.column(utterances, 'utt_id')[tables.column(utterances, 'split') == 'test'])
  with_votes = [u for u, n in zip(tables.column(human, 'utt_id'), tables.column(human, 'n_human')) if n > 0]
  metrics = outputs['evaluate']['metrics']['human']['test']['all']
  assert metrics['n'] == len(test_ids & set(with_votes))
  # JS divergence (base 2) of the saved predictions against the human distributions, computed here.
  folder = pathlib.Path(config.out_dir) / 'evaluation' / 'human' / 'test'
  predictions = tables.read_table(str(folder / 'predictions_test.parquet'))
  labels = [c for c in predictions.column_names if c.startswith('p_')]
  by_id = {u: i for i, u in enumerate(tables.column(human, 'utt_id'))}
  rows = [by_id[u] for u in tables.column(predictions, 'utt_id')]
  ref = np.stack([tables.column(human, c).astype(float)[rows] for c in labels], -1)
  pred = np.stack([tables.column(predictions, c).astype(float) for c in labels], -1)
  mid = (ref + pred) / 2

  def kl(p, q):
    return np.where(p > 0, p * np.log(np.where(p > 0, p, 1) / q), 0).sum(-1)

  js = (kl(ref, mid) + kl(pred, mid)) / 2 / np.log(2)
  assert metrics['js_divergence'] == pytest.approx(js.mean(), rel=1e-6)
  combined = outputs['evaluate']['metrics']['human+proxy']['test']['all']
  assert combined['js_divergence'] != pytest.approx(metrics['js_divergence'])


def test_analysis_compares_sparse_votes_proxies_and_combinations_to_the_dense_reference(run):
  config, _, _ = run
  with open(pathlib.Path(config.out_dir) / 'analysis' / 'alignment.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0]) == ['condition', 'level', 'metric', 'value', 'ci_low', 'ci_high', 'n']
  assert {'human', 'proxy', 'dirichlet'} <= {row['condition'] for row in rows}
  assert {row['level'] for row in rows} == {'low', 'medium', 'high', 'all'}
  js_all = [float(r['value']) for r in rows if r['metric'] == 'js_divergence' and r['level'] == 'all']
  assert all(0.0 <= value <= 1.0 for value in js_all)


def test_report_names_references_states_levels_once_and_its_plots_render(run, tmp_path):
  config, outputs, _ = run
  markdown = pathlib.Path(outputs['report']['markdown']).read_text(encoding='utf-8')
  for heading in (
    'What ran',
    'Ambiguity levels',
    'Fine-tuning the distributional head',
    'Evaluation against the human votes',
    'Evaluation against human + proxy targets (extra)',
    'recover the dense human reference',
  ):
    assert f'## {heading}' in markdown or heading in markdown, heading
  info = jsonio.read_json(outputs['distributions']['human_info'])
  definition = pipeline.bodies.level_definition(info)
  assert markdown.count(definition.describe()) == 1
  assert 'split train' in definition.describe()
  captions = [line for line in markdown.splitlines() if line.startswith('**Set ')]
  assert captions and all('reference human' in c for c in captions)
  assert config.out_dir not in markdown  # paths relative to the run directory, movable
  assert 'seconds' not in markdown  # no timings: reruns write the same report
  body = rendered_body(pathlib.Path(outputs['report']['html']), tmp_path)
  assert 'data-images-broken="0"' in body


def test_a_rerun_reuses_every_stage_and_a_removed_record_is_redone(run):
  config, outputs, _ = run
  again, lines = run_logged(config)
  assert again == outputs and ran(lines) == []
  (pathlib.Path(config.out_dir) / 'stages' / 'report.json').unlink()
  _, lines = run_logged(config)
  assert ran(lines) == ['report']


def test_other_training_steps_and_bootstrap_rerun_only_the_stages_they_reach(run, tmp_path):
  config, _outputs, _ = run
  copy = tmp_path / 'copy'
  shutil.copytree(config.out_dir, copy)
  proxies = copy / 'proxies' / 'score' / 'scores.parquet'
  before = proxies.stat().st_mtime_ns
  changed = dataclasses.replace(config, out_dir=str(copy), train_steps=4, bootstrap=10)
  result, lines = run_logged(changed)
  assert ran(lines) == ['train', 'evaluate', 'analyze', 'report']
  assert proxies.stat().st_mtime_ns == before
  assert result['train']['final_step'] == 4
  assert any('train_steps: recorded 6, now 4' in line for line in lines)
  assert result['proxies']['score'] == str(proxies)


def _launch(*flags, cwd=ROOT):
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  return subprocess.run(
    [sys.executable, str(ROOT / 'launch' / 'pipeline.py'), *flags],
    capture_output=True,
    text=True,
    env=env,
    cwd=cwd,
    timeout=300,
  )


def test_the_launcher_names_the_failing_stage_and_the_missing_label_set(tmp_path):
  done = _launch(
    f'--out_dir={tmp_path / "a"}',
    '--corpus=manifest',
    '--corpus_path=/no/such/manifest.csv',
    '--label_set=demo',
  )
  assert done.returncode == 2
  assert done.stderr.strip().splitlines()[-1].startswith('error: [prepare] ')
  done = _launch(f'--out_dir={tmp_path / "b"}', '--corpus=manifest', '--corpus_path=/x.csv')
  assert done.returncode == 2 and 'give --label_set' in done.stderr
  done = _launch(f'--out_dir={tmp_path / "c"}', '--iemocap_test_session=3')
  assert done.returncode == 2 and '--iemocap_test_session applies to --corpus=iemocap' in done.stderr


def _table_rows(path: pathlib.Path) -> list[dict]:
  """A table's rows without columns that hold paths (they name the run directory); NaN as None, so
  that equal tables compare equal."""
  table = tables.read_table(str(path))
  return jsonio.jsonable([{k: v for k, v in row.items() if k != 'audio_path'} for row in table.to_pylist()])


def _results(out: pathlib.Path) -> dict:
  """What an interrupted run must reproduce: report, evaluation, tables, training losses."""
  results = {'report.md': (out / 'report.md').read_text(encoding='utf-8')}
  for pattern in ('evaluation/**/metrics_*.json', 'analysis/*.json'):
    for path in sorted(out.glob(pattern)):
      results[str(path.relative_to(out))] = jsonio.read_json(path)
  results['analysis/summary.json'].pop('seconds')  # how long the analysis took: differs by nature
  for pattern in (
    'distributions/*/*.parquet',
    'proxies/*/*.parquet',
    'evaluation/**/*.parquet',
    'data/*.parquet',
  ):
    for path in sorted(out.glob(pattern)):
      results[str(path.relative_to(out))] = _table_rows(path)
  losses = [line for line in (out / 'train' / 'metrics.jsonl').read_text().splitlines() if line]
  results['losses'] = [{k: v for k, v in json.loads(line).items() if k != 'seconds'} for line in losses]
  return results


def test_kill_9_in_every_stage_then_a_rerun_gives_the_uninterrupted_results(run, tmp_path):
  """kill -9 once inside each stage (after a delay drawn per stage with a fixed seed), rerunning the
  same command each time; the finished run equals the uninterrupted one."""
  import random

  config, _, _ = run
  out = tmp_path / 'killed'
  flags = [f'--out_dir={out}', *SMALL_FLAGS]
  env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED='1')
  command = [sys.executable, str(ROOT / 'launch' / 'pipeline.py'), *flags]
  killed_in = []
  for stage in pipeline.STAGES:
    if (out / 'stages' / f'{stage}.json').exists():
      continue  # an earlier kill landed after this stage finished
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    for line in process.stdout:
      if f'[{stage}] running' in line:
        break
    delay = random.Random(stage).uniform(0.0, 2.0)
    try:
      process.wait(timeout=delay)
    except subprocess.TimeoutExpired:
      process.kill()  # SIGKILL: no cleanup of any kind
      killed_in.append(stage)
    process.stdout.read()
    process.wait()
  assert len(killed_in) >= 3, killed_in
  done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  assert _results(out) == _results(pathlib.Path(config.out_dir))


@pytest.fixture(scope='module')
def cross_validation(run, tmp_path_factory):
  """Two-fold cross-validation on a manifest corpus cut from the demo corpus (40 clips, 2 speakers a fold)."""
  import pyarrow as pa

  from perax.data.corpora import demo

  root = tmp_path_factory.mktemp('cv')
  demo.generate(str(root / 'demo'), seed=1)
  corpus = demo.load(str(root / 'demo'))
  speakers = tables.column(corpus.utterances, 'speaker')
  fold_of = {'spk00': 'A', 'spk01': 'A', 'spk02': 'B', 'spk03': 'B'}
  keep = np.asarray([s in fold_of for s in speakers])
  utterances = corpus.utterances.filter(pa.array(keep))
  folds = [fold_of[s] for s in tables.column(utterances, 'speaker')]
  utterances = utterances.set_column(
    utterances.schema.get_field_index('fold'), 'fold', pa.array(folds, pa.string())
  )
  kept_ids = set(tables.column(utterances, 'utt_id'))
  votes = corpus.votes.filter(pa.array([u in kept_ids for u in tables.column(corpus.votes, 'utt_id')]))
  manifest = tables.write_table(utterances, str(root / 'utterances.parquet'))
  votes_path = tables.write_table(votes, str(root / 'votes.parquet'))
  config = pipeline.PipelineConfig(
    out_dir=str(root / 'run'),
    corpus='manifest',
    corpus_path=manifest,
    corpus_options={'votes': votes_path},
    label_set='demo',
    checkpoint=run[1]['checkpoint']['checkpoint'],
    folds=('all',),
    **{**SMALL, 'train_steps': 2, 'sparse_k': (1,)},
  )
  outputs, lines = run_logged(config)
  return config, outputs, lines, dict(zip(tables.column(utterances, 'utt_id'), folds))


def test_cross_validation_shares_the_proxies_and_trains_each_fold(cross_validation):
  config, outputs, lines, fold_of = cross_validation
  stages = ran(lines)
  assert stages.count('proxies') == 1
  for fold in ('A', 'B'):
    for stage in ('distributions', 'augment', 'train', 'evaluate'):
      assert f'{stage} {fold}' in stages
    fold_outputs = outputs['folds'][fold]
    split = tables.read_utterances(fold_outputs['distributions']['utterances'])
    expected = ['test' if fold_of[u] == fold else 'train' for u in tables.column(split, 'utt_id')]
    assert tables.column(split, 'split').tolist() == expected
    info = jsonio.read_json(fold_outputs['distributions']['human_info'])
    definition = pipeline.bodies.level_definition(info)
    assert (definition.split, definition.fitted_on) == ('train', expected.count('train'))
    assert pathlib.Path(config.out_dir, 'folds', fold, 'train', 'metrics.jsonl').is_file()


def test_cross_validation_reports_each_fold_and_mean_and_std(cross_validation):
  _config, outputs, _, _ = cross_validation
  markdown = pathlib.Path(outputs['report']['markdown']).read_text(encoding='utf-8')
  values = [
    outputs['folds'][f]['evaluate']['metrics']['human']['test']['all']['js_divergence'] for f in ('A', 'B')
  ]
  fmt = pipeline.compose.report_lib.format_value
  expected = f'{fmt(float(np.mean(values)))} ± {fmt(float(np.std(values)))}'
  table = markdown.split('**Set test, reference human: all utterances, per fold and mean ± std over folds**')[
    1
  ]
  rows = [line for line in table.split('\n\n')[1].splitlines() if line.startswith('| ')]
  header = [c.strip() for c in rows[0].strip('|').split('|')]
  by_fold = {
    r.strip('|').split('|')[0].strip(): [c.strip() for c in r.strip('|').split('|')] for r in rows[1:]
  }
  column = header.index('js_divergence')
  assert set(by_fold) == {'A', 'B', 'mean ± std'}
  assert by_fold['mean ± std'][column] == expected
  assert by_fold['A'][column] == fmt(values[0])
  assert '2-fold cross-validation' in markdown


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _close(a, b, rtol: float) -> bool:
  """Nested JSON values equal, floats within ``rtol`` (relative) or 1e-6 (absolute: correlations near 0)."""
  if isinstance(a, dict) and isinstance(b, dict):
    return a.keys() == b.keys() and all(_close(a[k], b[k], rtol) for k in a)
  if isinstance(a, list) and isinstance(b, list):
    return len(a) == len(b) and all(_close(x, y, rtol) for x, y in zip(a, b))
  if isinstance(a, float) and isinstance(b, float):
    return abs(a - b) <= max(rtol * max(abs(a), abs(b)), 1e-6)
  return a == b


def test_two_processes_run_the_pipeline_like_one(run, tmp_path):
  """The pipeline as two processes (JAX's distributed runtime, gloo on CPU, 4 devices each) against
  the in-process run on 8 devices (the same global training mesh): the same data, proxy scores,
  distributions, training losses and evaluation. Process 0 writes every record; proxies, training and
  evaluation are shared out. Proxy votes may differ in a rare token: the two runs compile on
  different CPU device counts, and the tiny random model's near-uniform distributions turn float
  noise (about 1e-9 in the scores) into an occasional different draw."""
  config, _, _ = run
  out = tmp_path / 'two'
  port = _free_port()
  env = dict(
    os.environ,
    PYTHONPATH=str(ROOT),
    JAX_PLATFORMS='cpu',
    XLA_FLAGS='--xla_force_host_platform_device_count=4',
  )
  command = [
    sys.executable,
    str(ROOT / 'launch' / 'pipeline.py'),
    f'--out_dir={out}',
    *SMALL_FLAGS,
    f'--coordinator_address=127.0.0.1:{port}',
    '--num_processes=2',
  ]
  processes = [
    subprocess.Popen(
      [*command, f'--process_id={i}'], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    for i in range(2)
  ]
  logs = [p.communicate(timeout=900)[0] for p in processes]
  if any('gloo' in text.lower() and 'not' in text.lower() and 'available' in text.lower() for text in logs):
    pytest.skip('jaxlib without gloo CPU collectives')
  assert [p.returncode for p in processes] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
  one, two = _results(pathlib.Path(config.out_dir)), _results(out)
  assert one.keys() == two.keys()
  for name in one:
    if name.startswith('proxies/sample/') or name == 'report.md':
      continue
    if name.startswith('proxies/'):  # the rater names the checkpoint directory (converted or HF)
      one[name] = [{k: v for k, v in row.items() if k != 'rater'} for row in one[name]]
      two[name] = [{k: v for k, v in row.items() if k != 'rater'} for row in two[name]]
    assert _close(one[name], two[name], rtol=1e-5), name
  votes = [
    (r['utt_id'], r['prompt_id'], r['vote_index'], r['label']) for r in one['proxies/sample/votes.parquet']
  ]
  other = [
    (r['utt_id'], r['prompt_id'], r['vote_index'], r['label']) for r in two['proxies/sample/votes.parquet']
  ]
  assert len(votes) == len(other) and sum(a == b for a, b in zip(votes, other)) >= 0.99 * len(votes)
  assert (out / 'report.html').is_file()
  # Process 0 ran the stages that are not shared out; both ran the shared ones.
  assert '[prepare] running' in logs[0] and '[prepare] running' not in logs[1]
  assert all('[train] running' in text for text in logs)
