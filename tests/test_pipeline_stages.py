"""Pipeline pieces without a model: stage keying, config defaults, folds and splits, resumable demo corpus."""

import dataclasses
import hashlib
import json
import os
import pathlib

import log_lines
import pyarrow as pa
import pytest

from perax import analysis, pipeline
from perax.core.errors import InputError
from perax.data import labels as labels_lib
from perax.data import tables
from perax.pipeline import bodies, training
from perax.pipeline import config as config_lib
from perax.pipeline import run as run_lib
from perax.pipeline import stages as stages_lib
from perax.raters import prompts, proxies


@pytest.fixture
def lines():
  with log_lines.captured() as logged:
    yield logged


def _writer(directory, text, calls):
  def body():
    calls.append(text)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, 'out.txt')
    with open(path, 'w') as f:
      f.write(text)
    return {'file': path, 'value': len(text)}

  return body


def test_a_stage_runs_once_per_key_and_reruns_clearing_its_directory_when_the_key_changes(tmp_path, lines):
  root, out = str(tmp_path), str(tmp_path / 'a')
  calls = []
  first = stages_lib.Stages(root).run('a', {'x': 1}, _writer(out, 'one', calls), clears=[out])
  assert not first.reused and calls == ['one']
  again = stages_lib.Stages(root).run('a', {'x': 1}, _writer(out, 'two', calls), clears=[out])
  assert again.reused and calls == ['one'] and again.digest == first.digest
  (tmp_path / 'a' / 'stray.txt').write_text('left by the old settings')
  changed = stages_lib.Stages(root).run('a', {'x': 2}, _writer(out, 'three', calls), clears=[out])
  assert calls == ['one', 'three'] and not changed.reused
  assert not (tmp_path / 'a' / 'stray.txt').exists()
  assert changed.digest != first.digest
  assert any('x: recorded 1, now 2' in line for line in lines)


def test_a_killed_stage_resumes_with_its_files_and_a_changed_one_starts_clean(tmp_path):
  root, out = str(tmp_path), str(tmp_path / 'a')
  os.makedirs(out)
  (tmp_path / 'a' / 'shard-0').write_text('work done before the kill')
  # What a kill leaves: the started record, no finished record.
  stages_lib.jsonio.write_json(tmp_path / 'stages' / 'a.started.json', {'x': 1})
  calls = []
  stages_lib.Stages(root).run('a', {'x': 1}, _writer(out, 'one', calls), clears=[out])
  assert (tmp_path / 'a' / 'shard-0').exists()  # same key: resumed, its files kept
  assert not (tmp_path / 'stages' / 'a.started.json').exists()
  os.remove(tmp_path / 'stages' / 'a.json')
  stages_lib.jsonio.write_json(tmp_path / 'stages' / 'a.started.json', {'x': 0})
  stages_lib.Stages(root).run('a', {'x': 1}, _writer(out, 'two', calls), clears=[out])
  assert not (tmp_path / 'a' / 'shard-0').exists()  # begun with other settings: cleared


def test_a_stage_whose_output_file_was_removed_runs_again(tmp_path):
  root, out, calls = str(tmp_path), str(tmp_path / 'a'), []
  record = stages_lib.Stages(root).run('a', {}, _writer(out, 'one', calls))
  os.remove(record.outputs['file'])
  stages_lib.Stages(root).run('a', {}, _writer(out, 'one', calls))
  assert calls == ['one', 'one']


def test_digests_cover_file_bytes_and_not_the_run_directory(tmp_path):
  for name in ('x', 'y'):
    (tmp_path / name).mkdir()
    (tmp_path / name / 'f.txt').write_text('same')
  a = stages_lib.to_record({'f': str(tmp_path / 'x' / 'f.txt')}, str(tmp_path / 'x'))
  b = stages_lib.to_record({'f': str(tmp_path / 'y' / 'f.txt')}, str(tmp_path / 'y'))
  assert a == b == {'f': '<out_dir>/f.txt'}
  assert stages_lib.digest(a, str(tmp_path / 'x')) == stages_lib.digest(b, str(tmp_path / 'y'))
  (tmp_path / 'y' / 'f.txt').write_text('other')
  assert stages_lib.digest(a, str(tmp_path / 'x')) != stages_lib.digest(b, str(tmp_path / 'y'))
  expected = hashlib.sha256(b'other').hexdigest()
  assert stages_lib.file_sha256(str(tmp_path / 'y' / 'f.txt')) == expected
  assert stages_lib.from_record(a, 'runs/z') == {'f': 'runs/z/f.txt'}


def test_an_input_error_names_the_stage_it_came_from(tmp_path):
  def body():
    raise InputError('bad row', path='votes.csv', line=3)

  with pytest.raises(InputError, match=r'^\[proxies Session2\] votes.csv:3: bad row$'):
    stages_lib.Stages(str(tmp_path), 'Session2').run('proxies', {}, body)


def test_pipeline_defaults_are_the_stage_launchers_defaults():
  job = proxies.ProxyJob(
    model_name='m',
    label_set=labels_lib.get_label_set('iemocap4'),
    prompts=(prompts.Prompt('p', 'Which of {labels}?'),),
  )
  config = pipeline.PipelineConfig()
  for name in ('votes_per_utterance', 'temperature', 'top_k', 'top_p', 'max_new_tokens', 'batch_size'):
    assert getattr(config, name) == getattr(job, name), name
  settings = analysis.Settings(label_set='demo')
  assert (config.bootstrap, tuple(config.sparse_k), config.repeats) == (
    settings.bootstrap,
    tuple(settings.sparse_k),
    settings.repeats,
  )


def test_the_label_set_defaults_to_the_corpus_natural_one_and_a_manifest_needs_one():
  expected = {
    'demo': 'demo',
    'iemocap': 'iemocap4',
    'msp_podcast': 'msp_podcast',
    'crema_d': 'crema_d',
    'emodb': 'emodb',
  }
  for corpus, name in expected.items():
    resolved = pipeline.PipelineConfig(corpus=corpus).resolved_label_set()
    assert resolved == name
    labels_lib.get_label_set(resolved)  # a registered set
  assert pipeline.PipelineConfig(corpus='iemocap', label_set='a,b').resolved_label_set() == 'a,b'
  with pytest.raises(InputError, match='--label_set'):
    pipeline.PipelineConfig(corpus='manifest').resolved_label_set()
  assert pipeline.PipelineConfig(corpus='msp_podcast').wanted_test_splits() == ('test1',)
  assert pipeline.PipelineConfig(corpus='iemocap').wanted_test_splits() == ('test',)


def _utterances(tmp_path, splits, folds):
  n = len(splits)
  table = tables.utterances_table(
    {'utt_id': [f'u{i}' for i in range(n)], 'split': list(splits), 'fold': list(folds), 'speaker': ['s'] * n}
  )
  return tables.write_table(table, str(tmp_path / 'utterances.parquet'))


def test_folds_and_test_splits_resolve_against_the_corpus(tmp_path):
  path = _utterances(
    tmp_path,
    ['train', 'test1', 'test2', 'dev', 'train'],  # MSP-Podcast's sets as perax's split column holds them
    ['Session1', 'Session2', 'Session2', 'Session3', 'Session1'],
  )
  assert run_lib.resolve_folds(('all',), path) == ('Session1', 'Session2', 'Session3')
  assert run_lib.resolve_folds(('2', 'Session1'), path) == ('Session2', 'Session1')
  assert run_lib.resolve_folds(None, path) == ()
  with pytest.raises(InputError, match='unknown fold .Session9.; folds: Session1, Session2, Session3'):
    run_lib.resolve_folds(('Session9',), path)
  assert run_lib.resolve_splits(('Test1', 'TEST2'), path) == ('test1', 'test2')
  with pytest.raises(InputError, match=r"test split\(s\) \['test3'\]; splits: dev, test1, test2, train"):
    run_lib.resolve_splits(('test3',), path)


def test_a_fold_table_tests_on_its_fold_and_trains_on_the_rest(tmp_path):
  folds = ['Session1', 'Session2', 'Session1', 'Session3']
  path = _utterances(tmp_path, ['train', 'train', 'test', 'test'], folds)
  out = bodies.fold_utterances(path, 'Session1', str(tmp_path / 'fold.parquet'))
  split = tables.column(tables.read_utterances(out), 'split').tolist()
  assert split == ['test' if f == 'Session1' else 'train' for f in folds]
  with pytest.raises(InputError, match='no utterance has fold'):
    bodies.fold_utterances(path, 'Session7', str(tmp_path / 'x.parquet'))


def test_a_demo_corpus_killed_while_generating_is_generated_again(tmp_path, monkeypatch):
  calls = []

  def generate(path, seed):
    calls.append(seed)
    os.makedirs(path, exist_ok=True)
    pathlib.Path(path, 'wav').mkdir(exist_ok=True)
    if len(calls) == 1:
      raise KeyboardInterrupt  # killed half-way: wav/ written, tables not
    pathlib.Path(path, 'utterances.csv').write_text('done')

  monkeypatch.setattr(bodies.demo_corpus, 'generate', generate)
  with pytest.raises(KeyboardInterrupt):
    bodies.demo_corpus_dir(str(tmp_path), seed=3)
  corpus = bodies.demo_corpus_dir(str(tmp_path), seed=3)
  assert calls == [3, 3] and pathlib.Path(corpus, 'utterances.csv').exists()
  assert bodies.demo_corpus_dir(str(tmp_path), seed=3) == corpus and calls == [3, 3]


def test_a_resumed_training_reports_every_step_of_metrics_jsonl(tmp_path, monkeypatch):
  workdir = tmp_path / 'train'
  workdir.mkdir()
  losses = {step: 1.0 / step for step in range(1, 11)}
  (workdir / 'metrics.jsonl').write_text(
    ''.join(json.dumps({'step': s, 'loss': v}) + '\n' for s, v in losses.items())
  )

  def resumed_train(config, directory, **_):  # resumed from step 7: this call ran steps 8-10 only
    return training.loop.TrainResult(str(directory), 7, 10, {s: losses[s] for s in (8, 9, 10)}, {}, 10, [])

  monkeypatch.setattr(training.loop, 'train', resumed_train)
  outputs = training.train(None, str(workdir), 'train')
  assert (outputs['first_step'], outputs['first_loss'], outputs['last_loss']) == (1, 1.0, 0.1)
  assert pathlib.Path(outputs['loss_plot']).is_file()


def test_level_definition_is_read_from_a_record_or_from_the_edges(tmp_path):
  record = {'edges': [0.1, 0.5], 'source': 'tertiles', 'split': 'train', 'fitted_on': 12}
  assert bodies.level_definition({'level_definition': record}).to_json() == record
  legacy = bodies.level_definition(
    {'edges': [0.0, 0.459], 'edges_from': 'tertiles of split train (120 items)'}
  )
  assert (legacy.split, legacy.fitted_on, legacy.source) == ('train', 120, 'tertiles')
  assert bodies.level_definition({'edges': [0.2, 0.3], 'edges_from': 'fixed'}).source == 'fixed'


def test_an_out_dir_of_another_corpus_is_refused_naming_the_setting(tmp_path):
  config = pipeline.PipelineConfig(out_dir=str(tmp_path))
  run_lib._claim_corpus(config)
  other = dataclasses.replace(config, corpus='emodb', corpus_path='/data/emodb')
  with pytest.raises(InputError, match=r"corpus: recorded 'demo', now 'emodb'.*another --out_dir"):
    run_lib._claim_corpus(other)


def test_mean_and_std_over_folds_are_the_population_statistics():
  per_fold = {
    f: {'all': {'js_divergence': v, 'n': 10}} for f, v in (('a', 0.1), ('b', 0.3), ('c', float('nan')))
  }
  from perax.pipeline import compose

  rows = compose.fold_rows(per_fold, 'all')
  assert rows[-1]['fold'] == 'mean ± std'
  assert rows[-1]['js_divergence'] == '0.2 ± 0.1'  # mean 0.2, population std 0.1 of the finite values
  assert rows[2]['js_divergence'] == 'n/a'
  assert compose.format_mean_std([]) == 'n/a'


def test_config_module_takes_defaults_from_the_dataclasses():
  assert (
    config_lib.proxy_default('max_new_tokens')
    == proxies.ProxyJob.__dataclass_fields__['max_new_tokens'].default
  )
  assert pa is not None


def test_split_roles_match_the_corpus_spelling(tmp_path):
  path = _utterances(tmp_path, ['train', 'dev', 'test1'], ['a', 'b', 'c'])
  assert (bodies.split_name('train', path), bodies.split_name('dev', path)) == ('train', 'dev')
  path = _utterances(tmp_path, ['train', 'test'], ['a', 'b'])
  assert (bodies.split_name('train', path), bodies.split_name('dev', path)) == ('train', None)
