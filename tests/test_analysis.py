"""The statistical analysis: bootstrap, Wilcoxon, alignment, sparse-vs-dense, and a CREMA-D run."""

import csv
import html
import itertools
import json
import pathlib
import re
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
import scipy.spatial.distance
import scipy.stats

from perax import analysis, distributions
from perax.analysis import report, sparse_dense
from perax.core.errors import InputError
from perax.data import labels as labels_lib
from perax.data import tables
from perax.distributions import metrics

REPO = pathlib.Path(__file__).resolve().parents[1]
LABELS = labels_lib.get_label_set('iemocap4')
C = len(LABELS)


def _true_distributions(n: int, rng: np.random.Generator) -> np.ndarray:
  """[n, C] distributions around a dominant label, from peaked to flat (all ambiguity levels)."""
  dominant = rng.integers(C, size=n)
  peak = rng.choice([0.5, 3.0, 12.0], size=n)
  alpha = 0.6 + peak[:, None] * np.eye(C)[dominant]
  return np.stack([rng.dirichlet(a) for a in alpha])


def _votes(
  p: np.ndarray,
  votes_per_utt: int,
  rng: np.random.Generator,
  prefix: str,
  source: str = tables.HUMAN,
  first_rater: int = 0,
) -> pa.Table:
  """A votes table with ``votes_per_utt`` raters per utterance sampling labels from ``p``."""
  n = len(p)
  draws = (rng.random((n, votes_per_utt, 1)) > np.cumsum(p, -1)[:, None, :-1]).sum(-1)
  return tables.votes_table(
    {
      'utt_id': np.repeat([f'utt{i:04d}' for i in range(n)], votes_per_utt),
      'rater': np.tile([f'{prefix}{j + first_rater}' for j in range(votes_per_utt)], n),
      'source': [source] * (n * votes_per_utt),
      'label': np.asarray(LABELS.labels)[draws.ravel()],
    }
  )


def _scores(p: np.ndarray) -> pa.Table:
  columns = {'utt_id': [f'utt{i:04d}' for i in range(len(p))], 'prompt_id': ['p0'] * len(p)}
  columns.update(zip(tables.label_columns(LABELS.labels), p.T))
  return pa.table(columns)


@pytest.fixture(scope='module')
def planted():
  """Reference and prediction [1, N, C] with many tied entropies (5-vote distributions)."""
  rng = np.random.default_rng(1)
  truth = _true_distributions(400, rng)
  ref = np.stack([rng.multinomial(5, p) for p in truth]) / 5.0
  pred = np.stack([rng.multinomial(5, p) for p in truth]) / 5.0
  return ref[None], pred[None]


@pytest.fixture(scope='module')
def dense_corpus():
  """300 utterances: 20 dense human votes each, and proxy scores equal to the true distributions."""
  rng = np.random.default_rng(7)
  truth = _true_distributions(300, rng)
  return truth, _votes(truth, 20, rng, 'h'), _scores(truth)


# ----------------------------------------------------------------------------------------------
# Bootstrap.


def test_weighted_metrics_with_unit_weights_equal_perax_metrics(planted):
  ref, pred = planted
  parts = analysis.ingredients(ref, pred, analysis.ALIGNMENT_METRICS)
  mine = analysis.weighted_metrics(parts, np.ones((1, ref.shape[1])), analysis.ALIGNMENT_METRICS)
  expected = metrics.distribution_metrics(ref[0], pred[0])
  for name in analysis.ALIGNMENT_METRICS:
    np.testing.assert_allclose(mine[name][0], expected[name], rtol=1e-9, err_msg=name)
  entropy_ref = distributions.normalized_entropy(ref[0])
  entropy_pred = distributions.normalized_entropy(pred[0])
  np.testing.assert_allclose(
    mine['entropy_spearman'][0], scipy.stats.spearmanr(entropy_ref, entropy_pred).statistic, rtol=1e-9
  )


def test_bootstrap_weights_equal_explicit_resampling(planted):
  ref, pred = planted
  n = ref.shape[1]
  weights = analysis.bootstrap_weights(n, 4, np.random.default_rng(3))
  indices = np.random.default_rng(3).integers(0, n, size=(4, n))
  np.testing.assert_array_equal(weights.sum(1), n)
  parts = analysis.ingredients(ref, pred, analysis.ALIGNMENT_METRICS)
  samples = analysis.bootstrap_metrics(parts, weights, analysis.ALIGNMENT_METRICS)
  for b in range(4):
    direct = metrics.distribution_metrics(ref[0][indices[b]], pred[0][indices[b]])
    for name in analysis.ALIGNMENT_METRICS:
      np.testing.assert_allclose(samples[name][b], direct[name], rtol=1e-9, err_msg=name)


def test_repeats_resample_with_their_utterance(planted):
  ref, pred = planted
  stacked_ref = np.concatenate([ref, pred, ref])
  stacked_pred = np.concatenate([pred, ref, ref * 0.5 + pred * 0.5])
  parts = analysis.ingredients(stacked_ref, stacked_pred, analysis.ALIGNMENT_METRICS)
  mine = analysis.weighted_metrics(parts, np.ones((1, ref.shape[1])), analysis.ALIGNMENT_METRICS)
  expected = analysis.point_metrics(stacked_ref, stacked_pred)
  for name in analysis.ALIGNMENT_METRICS:
    np.testing.assert_allclose(mine[name][0], expected[name], rtol=1e-9, err_msg=name)


def _interval(n: int, seed: int) -> tuple[float, float, float]:
  rng = np.random.default_rng(seed)
  truth = _true_distributions(n, rng)
  ref = np.stack([rng.multinomial(8, p) for p in truth])[None] / 8.0
  rows, _ = analysis.score_condition(
    ref,
    truth[None],
    analysis.bootstrap_weights(n, 400, rng),
    ('js_divergence', 'r2', 'entropy_spearman'),
    0.95,
  )
  return {row['metric']: (row['value'], row['ci_low'], row['ci_high']) for row in rows}


def test_interval_contains_the_estimate_and_shrinks_with_n():
  small, large = _interval(100, 0), _interval(1600, 1)
  for name in small:
    for value, low, high in (small[name], large[name]):
      assert low <= value <= high, name
    width_small = small[name][2] - small[name][1]
    width_large = large[name][2] - large[name][1]
    # The width goes as 1 / sqrt(N): 16x the items, about a quarter of the width.
    assert 0.15 < width_large / width_small < 0.4, (name, width_small, width_large)


def test_bootstrap_is_deterministic_given_the_seed():
  assert _interval(200, 5) == _interval(200, 5)
  assert _interval(200, 5) != _interval(200, 6)


# ----------------------------------------------------------------------------------------------
# Wilcoxon.


def test_wilcoxon_hand_case():
  # Differences 1, -2, 3, 4, -5, 6: ranks of |d| are 1..6, W+ = 1+3+4+6 = 14, W- = 2+5 = 7.
  # Exact two-sided p = 2 P(W <= 7) = 2 * 18 / 64: 18 of the 64 subsets of {1..6} sum to <= 7
  # (by sum 0..7: 1, 1, 1, 2, 2, 3, 4, 4).
  baseline = np.array([10.0, 20.0, 30.0, 40.0, 50.0, 60.0])
  values = baseline + np.array([1.0, -2.0, 3.0, 4.0, -5.0, 6.0])
  result = analysis.wilcoxon(values, baseline)
  assert result['statistic'] == 7.0
  assert result['p_value'] == pytest.approx(2 * 18 / 64)
  scipy_result = scipy.stats.wilcoxon(values, baseline)
  assert result['p_value'] == pytest.approx(scipy_result.pvalue)
  assert result['median_difference'] == 2.0 and result['n'] == 6


def test_wilcoxon_without_differences_is_p_one():
  result = analysis.wilcoxon(np.ones(5), np.ones(5))
  assert result['statistic'] == 0.0 and result['p_value'] == 1.0


# ----------------------------------------------------------------------------------------------
# Sparse draws.


def test_rater_units_keep_multi_label_raters_whole_and_report_outside_votes():
  votes = tables.votes_table(
    [
      dict(utt_id='a', rater='r1', source='human', label='happy', weight=0.5),
      dict(utt_id='a', rater='r1', source='human', label='sad', weight=0.5),
      dict(utt_id='a', rater='r2', source='human', label='angry'),
      dict(utt_id='a', rater='r3', source='human', label='fear'),
      dict(utt_id='b', rater='r1', source='human', label='invalid'),
      dict(utt_id='b', rater='r2', source='human', label='excited'),
      dict(utt_id='z', rater='r1', source='human', label='happy'),
    ]
  )
  units = sparse_dense.rater_votes(votes, LABELS, ['a', 'b'])
  np.testing.assert_array_equal(units.raters_per_utt, [2, 1])
  np.testing.assert_allclose(units.counts(), [[0, 0.5, 0.5, 1], [0, 1, 0, 0]])
  assert units.outside == 2.0  # fear (outside iemocap4) and invalid; 'z' is not asked for


def test_draws_are_nested_and_split_the_votes(dense_corpus):
  truth, votes, _ = dense_corpus
  ids = [f'utt{i:04d}' for i in range(len(truth))]
  units = sparse_dense.rater_votes(votes, LABELS, ids)
  previous = None
  for draw in sparse_dense.draws(units, (1, 2, 5), 1, seed=0):
    np.testing.assert_allclose(draw.sparse.sum(1), draw.k)
    np.testing.assert_allclose(draw.sparse + draw.reference, units.counts())
    if previous is not None:
      assert (draw.sparse >= previous).all()
    previous = draw.sparse
  first = [d.sparse for d in sparse_dense.draws(units, (2,), 2, seed=0)]
  again = [d.sparse for d in sparse_dense.draws(units, (2,), 2, seed=0)]
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first[0], first[1])


@pytest.fixture(scope='module')
def sparse_study(dense_corpus):
  _truth, votes, scores = dense_corpus
  evidence = analysis.gather_evidence(votes, scores, LABELS)
  combination = analysis.fitted_combination(evidence, None, 1.0, 0.5, None)
  return analysis.sparse_vs_dense(
    evidence,
    votes,
    LABELS,
    combination,
    (1, 2, 3, 4, 5),
    repeats=3,
    resamples=50,
    confidence=0.95,
    seed=0,
    level_definition=distributions.fit_levels(
      distributions.normalized_entropy(distributions.to_distribution(evidence.n_h))
    ),
  )


def _value(rows, **where):
  found = [r['value'] for r in rows if all(r[k] == v for k, v in where.items())]
  assert len(found) == 1, where
  return found[0]


def test_sparse_error_falls_with_k_and_the_true_proxy_helps_most_at_small_k(sparse_study):
  rows = sparse_study.rows
  assert sparse_study.ks == (1, 2, 3, 4, 5) and sparse_study.n_items == 300
  assert all(set(row) == set(analysis.SPARSE_COLUMNS) for row in rows)
  for level in ('low', 'medium', 'high', 'all'):
    human = [_value(rows, k=k, condition='human', level=level, metric='js_divergence') for k in range(1, 6)]
    assert all(a > b for a, b in itertools.pairwise(human)), (level, human)
  gains = {}
  for condition in analysis.COMBINED:
    gains[condition] = [
      _value(rows, k=k, condition='human', level='all', metric='js_divergence')
      - _value(rows, k=k, condition=condition, level='all', metric='js_divergence')
      for k in range(1, 6)
    ]
    assert gains[condition][0] > 0, condition
    assert gains[condition][0] > gains[condition][-1], (condition, gains[condition])
  tests = [
    t
    for t in sparse_study.wilcoxon
    if t['k'] == 1
    and t['level'] == 'all'
    and t['metric'] == 'js_divergence'
    and t['condition'] == 'dirichlet'
  ]
  assert tests[0]['p_value'] < 1e-6 and tests[0]['median_difference'] < 0


def _three_angry_one_sad(n: int) -> tuple[pa.Table, pa.Table]:
  """n utterances with 4 human raters each: three vote angry, one votes sad; and flat proxy scores."""
  ids = [f'utt{i:04d}' for i in range(n)]
  votes = tables.votes_table(
    {
      'utt_id': np.repeat(ids, 4),
      'rater': np.tile(['r0', 'r1', 'r2', 'r3'], n),
      'source': ['human'] * (4 * n),
      'label': np.tile(['angry', 'angry', 'angry', 'sad'], n),
    }
  )
  return votes, _scores(np.full((n, C), 1.0 / C))


def test_sparse_levels_default_to_the_reference_scored_against_not_all_votes():
  """All votes give every clip one entropy (medium); the remainder a drawn clip is scored against is
  pure angry (entropy 0, low) exactly when the sad rater was drawn, so the two conventions differ."""
  votes, scores = _three_angry_one_sad(60)
  evidence = analysis.gather_evidence(votes, scores, LABELS)
  combination = analysis.Combination(kappa=1.0)
  definition = distributions.LevelDefinition(edges=(0.2, 0.9))
  all_votes_entropy = scipy.stats.entropy([0.75, 0.25], base=C)
  assert 0.2 < all_votes_entropy <= 0.9  # medium under the older convention

  def study(level_by):
    return analysis.sparse_vs_dense(
      evidence, votes, LABELS, combination, (1,), 3, 20, 0.95, 0, definition, level_by=level_by
    )

  default, older = study(analysis.LEVEL_BY_REFERENCE), study(analysis.LEVEL_BY_ALL_VOTES)
  # Independent replay of the draws: the sad rater drawn <=> the remainder is pure angry.
  units = sparse_dense.rater_votes(votes, LABELS, evidence.utt_ids)
  sad = LABELS.labels.index('sad')
  sad_drawn = np.stack([d.sparse[:, sad] > 0 for d in sparse_dense.draws(units, (1,), 3, 0)])
  assert 0 < sad_drawn.sum() < sad_drawn.size

  def row(result, level, condition='human', metric='js_divergence'):
    [found] = [
      r for r in result.rows if r['level'] == level and r['condition'] == condition and r['metric'] == metric
    ]
    return found

  assert row(default, 'low')['draws'] == sad_drawn.sum()
  assert row(default, 'low')['n'] == sad_drawn.any(0).sum()
  assert row(default, 'medium')['draws'] == (~sad_drawn).sum()
  # Sparse 'sad' against a pure-angry remainder: disjoint distributions, JS = 1 bit exactly.
  assert row(default, 'low')['value'] == pytest.approx(1.0)
  medium_js = scipy.spatial.distance.jensenshannon([0, 0, 0, 1], [0, 0, 1 / 3, 2 / 3], base=2) ** 2
  assert row(default, 'medium')['value'] == pytest.approx(medium_js)
  assert row(older, 'low')['n'] == 0 and np.isnan(row(older, 'low')['value'])
  assert row(older, 'medium')['draws'] == sad_drawn.size
  expected_older = (sad_drawn.sum() * 1.0 + (~sad_drawn).sum() * medium_js) / sad_drawn.size
  assert row(older, 'medium')['value'] == pytest.approx(expected_older)
  assert 'excludes the sparse draw' in default.level_words and '(default)' in default.level_words
  assert 'older convention' in older.level_words


def test_masked_bootstrap_equals_metrics_of_the_kept_items(planted):
  ref, pred = planted
  stacked_ref, stacked_pred = np.concatenate([ref, pred]), np.concatenate([pred, ref])
  mask = np.random.default_rng(5).random(stacked_ref.shape[:2]) < 0.6
  parts = analysis.ingredients(stacked_ref, stacked_pred, analysis.ALIGNMENT_METRICS, mask)
  mine = analysis.weighted_metrics(parts, np.ones((1, ref.shape[1])), analysis.ALIGNMENT_METRICS)
  expected = metrics.distribution_metrics(stacked_ref[mask], stacked_pred[mask])
  for name in analysis.ALIGNMENT_METRICS:
    np.testing.assert_allclose(mine[name][0], expected[name], rtol=1e-9, err_msg=name)


def test_alignment_against_a_separate_reference(dense_corpus):
  truth, _, scores = dense_corpus
  rng = np.random.default_rng(11)
  human = _votes(truth, 3, rng, 'sparse')
  reference = _votes(truth, 30, rng, 'dense')
  evidence = analysis.gather_evidence(human, scores, LABELS, reference)
  levels = distributions.ambiguity_levels(
    distributions.normalized_entropy(distributions.to_distribution(evidence.n_h)), (0.3, 0.6)
  )
  combination = analysis.fitted_combination(evidence, None, 1.0, 0.5, None)
  result = analysis.alignment(evidence, levels, combination, 100, 0.95, seed=0)
  assert {r['condition'] for r in result.rows} == {'human', 'proxy', 'pooled', 'mixture', 'dirichlet'}
  human_js = _value(result.rows, condition='human', level='all', metric='js_divergence')
  proxy_js = _value(result.rows, condition='proxy', level='all', metric='js_divergence')
  assert proxy_js < human_js
  np.testing.assert_allclose(
    proxy_js, metrics.js_divergence(distributions.to_distribution(evidence.n_ref), truth).mean()
  )
  assert {t['condition'] for t in result.wilcoxon} == {'proxy', 'pooled', 'mixture', 'dirichlet'}


def test_launcher_writes_tables_plots_and_report(dense_corpus, tmp_path):
  truth, _, scores = dense_corpus
  rng = np.random.default_rng(12)
  paths = {
    'human': tmp_path / 'votes.parquet',
    'proxy': tmp_path / 'scores.parquet',
    'reference': tmp_path / 'reference.parquet',
    'utterances': tmp_path / 'utts.parquet',
  }
  tables.write_table(_votes(truth, 4, rng, 'h'), paths['human'])
  tables.write_table(scores, paths['proxy'])
  tables.write_table(_votes(truth, 30, rng, 'd'), paths['reference'])
  ids = [f'utt{i:04d}' for i in range(len(truth))]
  tables.write_table(
    tables.utterances_table({'utt_id': ids, 'split': ['train', 'train', 'test'] * (len(ids) // 3)}),
    paths['utterances'],
  )
  out = tmp_path / 'out'
  # The run's level definition, as the distributions stage recorded it.
  _, info = distributions.build_distributions(
    tables.read_votes(paths['human']),
    label_set=LABELS,
    utterances=tables.read_utterances(paths['utterances']),
  )
  distributions.write_distributions(pa.table({'utt_id': ['x']}), info, str(tmp_path / 'dist'))
  result = subprocess.run(
    [
      sys.executable,
      str(REPO / 'launch' / 'analyze.py'),
      '--label_set=iemocap4',
      *(f'--{name}={path}' for name, path in paths.items()),
      '--sparse_k=1,2,3',
      '--repeats=2',
      '--bootstrap=50',
      f'--level_definition={tmp_path / "dist"}',
      '--sparse_level_by=all_votes',
      f'--out_dir={out}',
    ],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  for name in ('alignment', 'sparse_dense', 'wilcoxon', 'levels'):
    for ext in ('csv', 'md', 'json'):
      assert (out / f'{name}.{ext}').stat().st_size > 0
  for name in (
    'ambiguity_histogram',
    'alignment_by_level',
    'examples',
    'majority_confusion',
    'sparse_dense_js_divergence',
    'sparse_dense_kl',
  ):
    assert (out / f'{name}.png').read_bytes().startswith(b'\x89PNG')
  summary = json.loads((out / 'summary.json').read_text())
  assert summary['levels'] == {
    'edges': summary['edges'],
    'source': 'tertiles',
    'split': 'train',
    'fitted_on': 200,
  }
  assert 'split train (200 utterances)' in summary['edges_from']
  assert summary['levels_given'] and summary['levels'] == info['levels']
  assert summary['sparse_dense']['level_by'] == 'all_votes'
  assert 'older convention' in (out / 'sparse_dense.md').read_text()
  assert summary['kappa_fit'] == {
    'votes': 'the human votes of the analysed utterances of split train',
    'n_utterances': 200,
  }
  assert summary['sparse_dense']['reference'] == 'separate'
  html = (out / 'report.html').read_text()
  assert html.count('<img src="data:image/png;base64,') == 6


def _strict_json(path):
  def refuse(constant):
    raise AssertionError(f'{path} holds {constant}')

  return json.loads(pathlib.Path(path).read_text(encoding='utf-8'), parse_constant=refuse)


def test_analysis_applies_a_given_level_definition_and_says_what_it_shows(dense_corpus, tmp_path):
  truth, _, scores = dense_corpus
  human = _votes(truth[:120], 4, np.random.default_rng(13), 'h')  # no separate dense reference
  definition = distributions.LevelDefinition(
    edges=(0.31, 0.62), source='tertiles', split='train', fitted_on=7
  )
  settings = analysis.Settings('iemocap4', levels=definition, sparse_k=(1, 2), repeats=1, bootstrap=20)
  outputs = analysis.analyze(analysis.Inputs(human, scores), settings, str(tmp_path))
  summary = _strict_json(outputs.summary)
  assert summary['levels'] == definition.to_json() and summary['levels_given']
  entropy = distributions.normalized_entropy(
    distributions.to_distribution(distributions.vote_counts(human, LABELS)[1])
  )
  expected = definition.levels(entropy)
  assert summary['level_counts'] == {level: int((expected == level).sum()) for level in distributions.LEVELS}
  for name in ('alignment', 'sparse_dense', 'wilcoxon', 'levels'):
    _strict_json(outputs.tables[name]['json'])
  markdown = pathlib.Path(outputs.report.markdown).read_text(encoding='utf-8')
  page = pathlib.Path(outputs.report.html).read_text(encoding='utf-8')
  for text, levels_text in ((markdown, definition.describe()), (page, html.escape(definition.describe()))):
    assert 'dense reference' not in text.replace('no separate dense reference', '')
    assert '[, ]' not in text and not re.search(r'-?\d\.\d+e-1[0-9]', text)
    assert levels_text in text
  # Every table caption names its reference (the levels and files tables have none to name).
  captions = re.findall(r'^\*\*(.+)\*\*$', markdown, flags=re.M)
  scored = [c for c in captions if c not in ('Tables written',) and not c.startswith('Utterances per')]
  assert scored and all('against ' in c for c in scored), scored
  assert all('_' not in c for c in captions), captions
  assert 'against the remaining human votes (the raters not drawn)' in markdown
  kappa = summary['kappa_words']
  assert kappa.startswith(f'kappa {summary["kappa"]:.4g}, fitted by empirical Bayes on the human votes of')
  assert f'({summary["kappa_fit"]["n_utterances"]} utterances)' in kappa and kappa in markdown
  assert set(outputs.captions) == set(outputs.plots) and all('_' not in c for c in outputs.captions.values())
  assert not list(tmp_path.glob('*.tmp-*'))
  # The brief section another report (the end-to-end run's) shows says the same.
  brief = analysis.overview_section(
    outputs.summary,
    {name: paths['json'] for name, paths in outputs.tables.items()},
    outputs.plots,
    outputs.report.html,
  )
  text = report.render_markdown('Run', [brief], str(tmp_path))
  assert 'dense reference' not in text.replace('no separate dense reference', '')
  assert all('against ' in t.caption for t in brief.tables) and len(brief.tables) == 3
  assert kappa in text and definition.describe() in text
  assert [f.caption for f in brief.figures] == [outputs.captions[name] for name in outputs.plots]


def test_bad_scores_name_the_file(dense_corpus, tmp_path):
  _truth, votes, scores = dense_corpus
  broken = scores.drop_columns(['p_sad'])
  inputs = analysis.Inputs(votes, broken, proxy_path='/data/scores.parquet')
  with pytest.raises(InputError, match='/data/scores.parquet.*p_sad'):
    analysis.analyze(inputs, analysis.Settings('iemocap4', bootstrap=10), str(tmp_path))


# ----------------------------------------------------------------------------------------------
# Real CREMA-D votes.


def _crema_counts(path: pathlib.Path, digit: str, clips: set) -> dict:
  """clip -> counts in crema_d label-set order (angry disgust fear happy neutral sad), via csv."""
  with open(path / 'tabulatedVotes.csv', newline='') as f:
    return {
      row['fileName']: np.array([float(row[c]) for c in 'ADFHNS'])
      for row in csv.DictReader(f)
      if row[''].startswith(digit) and row['fileName'] in clips
    }


def test_crema_d_subsample_writes_alignment_csv(crema_d_dir, tmp_path):
  inputs = analysis.subsample(analysis.crema_d_inputs(str(crema_d_dir)), 600, seed=0)
  outputs = analysis.analyze(inputs, analysis.Settings('crema_d', repeats=2, bootstrap=200), str(tmp_path))
  with open(outputs.tables['alignment']['csv'], newline='') as f:
    reader = csv.DictReader(f)
    assert reader.fieldnames == ['condition', 'level', 'metric', 'value', 'ci_low', 'ci_high', 'n']
    rows = list(reader)
  with open(outputs.tables['sparse_dense']['csv'], newline='') as f:
    assert csv.DictReader(f).fieldnames == [
      'k',
      'condition',
      'level',
      'metric',
      'value',
      'ci_low',
      'ci_high',
      'n',
      'draws',
    ]
  by_key = {(r['condition'], r['level'], r['metric']): r for r in rows}
  overall = by_key[('proxy', 'all', 'js_divergence')]
  assert int(overall['n']) == 600
  assert (
    sum(int(by_key[('proxy', level, 'js_divergence')]['n']) for level in ('low', 'medium', 'high')) == 600
  )
  clips = set(tables.column(inputs.human, 'utt_id'))
  voice = _crema_counts(crema_d_dir, '1', clips)
  face = _crema_counts(crema_d_dir, '2', clips)
  js = [
    scipy.spatial.distance.jensenshannon(voice[c] / voice[c].sum(), face[c] / face[c].sum(), base=2) ** 2
    for c in sorted(clips)
  ]
  assert float(overall['value']) == pytest.approx(np.mean(js), rel=1e-9)
  assert float(overall['ci_low']) < float(overall['value']) < float(overall['ci_high'])
