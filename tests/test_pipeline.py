"""The main job end to end on the demo corpus: every stage, resumption, and the report."""

import csv
import dataclasses
import pathlib

import pytest
from chromium_check import rendered_body

from perax import pipeline
from perax.core.errors import InputError

SMALL = dict(votes_per_utterance=2, max_new_tokens=2, train_steps=6, bootstrap=20, sparse_k=(1, 3), repeats=1)


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """One small pipeline run on the demo corpus, and the lines it printed."""
  config = pipeline.PipelineConfig(out_dir=str(tmp_path_factory.mktemp('pipeline')), **SMALL)
  lines = []
  outputs = pipeline.run_pipeline(config, echo=lines.append)
  return config, outputs, lines


def test_every_stage_ran_and_wrote_its_outputs(run):
  config, outputs, lines = run
  out = pathlib.Path(config.out_dir)
  assert list(outputs) == list(pipeline.STAGES)
  for stage in pipeline.STAGES:
    assert (out / 'stages' / f'{stage}.json').is_file()
    assert f'[{stage}] running' in lines
  for path in (
    outputs['proxies']['sample'],
    outputs['proxies']['score'],
    outputs['distributions']['human'],
    outputs['distributions']['combined'],
    outputs['augment']['train']['utterances'],
    outputs['augment']['eval']['utterances'],
  ):
    assert pathlib.Path(path).is_file(), path
  assert outputs['train']['final_step'] == SMALL['train_steps']
  assert set(outputs['evaluate']['metrics']) == {'test', 'test_balanced'}


def test_analysis_compares_sparse_votes_proxies_and_combinations_to_the_dense_reference(run):
  config, _, _ = run
  with open(pathlib.Path(config.out_dir) / 'analysis' / 'alignment.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0]) == ['condition', 'level', 'metric', 'value', 'ci_low', 'ci_high', 'n']
  assert {'human', 'proxy', 'dirichlet'} <= {row['condition'] for row in rows}
  assert {row['level'] for row in rows} == {'low', 'medium', 'high', 'all'}
  js_all = [float(r['value']) for r in rows if r['metric'] == 'js_divergence' and r['level'] == 'all']
  assert all(0.0 <= value <= 1.0 for value in js_all)


def test_report_shows_what_ran_and_its_plots_render(run, tmp_path):
  _config, outputs, _ = run
  html = pathlib.Path(outputs['report']['html'])
  text = html.read_text(encoding='utf-8')
  for heading in (
    'What ran',
    'Fine-tuning the distributional head',
    'Evaluation',
    'recover the dense reference',
  ):
    assert heading in text
  assert text.count('data:image/png;base64,') >= 4
  assert pathlib.Path(outputs['report']['markdown']).is_file()
  body = rendered_body(html, tmp_path)
  assert 'data-images-broken="0"' in body


def test_a_rerun_resumes_and_a_removed_stage_is_redone(run):
  config, outputs, _ = run
  again = []
  assert pipeline.run_pipeline(config, echo=again.append) == outputs
  assert not any(line.endswith('running') for line in again)
  (pathlib.Path(config.out_dir) / 'stages' / 'report.json').unlink()
  redone = []
  pipeline.run_pipeline(config, echo=redone.append)
  assert [line for line in redone if line.endswith('running')] == ['[report] running']


def test_a_rerun_with_other_settings_is_refused(run):
  config, _, _ = run
  changed = dataclasses.replace(config, seed=config.seed + 1, votes_per_utterance=3)
  with pytest.raises(InputError, match=r"differing: \['seed', 'votes_per_utterance'\]"):
    pipeline.run_pipeline(changed, echo=lambda line: None)
