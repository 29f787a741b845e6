"""Tests of perax.distributions: counting, combining, levels, the table, and a CREMA-D run."""

import csv
import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from perax import distributions as dist
from perax.core.errors import InputError, SkipCounter
from perax.data import labels as labels_lib
from perax.data import tables

DEMO = labels_lib.get_label_set('demo')  # neutral, happy, sad, angry; excited -> happy

counts_arrays = hnp.arrays(
  np.float64, st.tuples(st.integers(1, 12), st.integers(2, 6)), elements=st.integers(0, 9).map(float)
)


def _votes(rows, source='human'):
  return tables.votes_table(
    [
      {
        'utt_id': u,
        'rater': f'r{k}',
        'source': source,
        'label': label,
        **({'weight': w} if w is not None else {}),
      }
      for k, (u, label, w) in enumerate(rows)
    ]
  )


def _distributions_of(counts):
  """Row-normalised counts, rows without votes replaced by uniform (for property tests)."""
  totals = counts.sum(-1, keepdims=True)
  return np.where(totals > 0, counts / np.where(totals > 0, totals, 1), 1.0 / counts.shape[-1])


# ----------------------------------------------------------------------------------------------
# Counting.


def test_vote_counts_weights_merges_and_skips():
  votes = _votes(
    [
      ('a', 'neutral', None),
      ('a', 'excited', None),
      ('a', 'happy', 0.5),
      ('a', 'sad', 0.5),
      ('b', 'angry', None),
      ('b', 'invalid', None),
      ('b', 'fear', None),
      ('c', 'sad', None),
      ('zz', 'sad', None),
    ]
  )
  skipped = SkipCounter()
  ids, counts = dist.vote_counts(votes, DEMO, utt_ids=['c', 'empty', 'b', 'a'], skipped=skipped)
  assert ids.tolist() == ['c', 'empty', 'b', 'a']
  np.testing.assert_array_equal(counts, [[0, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 1], [1, 1.5, 0.5, 0]])
  assert counts.dtype == np.float64
  assert skipped.counts == {dist.SKIP_INVALID: 1, dist.SKIP_OUTSIDE: 1, dist.SKIP_UNKNOWN_UTT: 1}
  assert any("'zz'" in example for example in skipped.examples)


def test_vote_counts_default_rows_and_source_filter():
  votes = tables.concat(
    [
      _votes([('x', 'sad', None), ('y', 'happy', None)]),
      _votes([('y', 'angry', None), ('z', 'angry', None)], 'synthetic'),
    ]
  )
  ids, counts = dist.vote_counts(votes, 'demo')
  assert ids.tolist() == ['x', 'y', 'z']
  np.testing.assert_array_equal(counts.sum(-1), [1, 2, 1])
  ids, counts = dist.vote_counts(votes, 'demo', source='synthetic')
  assert ids.tolist() == ['y', 'z']
  np.testing.assert_array_equal(counts, [[0, 0, 0, 1], [0, 0, 0, 1]])


def test_vote_counts_rejects_negative_weight():
  votes = _votes([('a', 'sad', -1.0)])
  with pytest.raises(InputError, match='weight'):
    dist.vote_counts(votes, DEMO)


def test_vote_counts_at_scale_match_an_independent_count():
  """200k random votes (excited merged into happy, a tenth invalid) counted as np.add.at counts them."""
  rng = np.random.default_rng(0)
  num_votes, num_utts = 200_000, 20_000
  names = np.array([f'utt{i:07d}' for i in range(num_utts)], dtype=object)
  choices = np.array(list(DEMO.labels) + ['excited', labels_lib.INVALID], dtype=object)
  utt = rng.integers(0, num_utts, num_votes)
  label = rng.choice(len(choices), num_votes, p=[0.2, 0.2, 0.2, 0.2, 0.1, 0.1])
  weight = rng.uniform(0.5, 2.0, num_votes)
  votes = pa.table({'utt_id': pa.array(names[utt]), 'label': pa.array(choices[label]), 'weight': weight})
  ids, counts = dist.vote_counts(votes, DEMO, skipped=SkipCounter())
  expected = np.zeros((num_utts, len(DEMO.labels)))
  target = np.where(choices[label] == 'excited', DEMO.labels.index('happy'), label)  # the set's merge
  inside = target < len(DEMO.labels)
  np.add.at(expected, (utt[inside], target[inside]), weight[inside])
  row = {u: k for k, u in enumerate(names)}
  np.testing.assert_allclose(counts, expected[[row[u] for u in ids]])


# ----------------------------------------------------------------------------------------------
# Distributions, entropy, majority, levels.


def test_to_distribution_empty_rows_and_smoothing():
  counts = np.array([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
  p = dist.to_distribution(counts)
  np.testing.assert_allclose(p[0], [2 / 3, 1 / 3, 0])
  assert np.isnan(p[1]).all()
  smoothed = dist.to_distribution(counts, smoothing=1.0)
  np.testing.assert_allclose(smoothed, [[3 / 6, 2 / 6, 1 / 6], [1 / 3, 1 / 3, 1 / 3]])


@settings(max_examples=60, deadline=None)
@given(counts_arrays, st.floats(0.0, 3.0))
def test_distribution_properties(counts, smoothing):
  p = dist.to_distribution(counts, smoothing)
  has = counts.sum(-1) + smoothing > 0
  assert np.isnan(p[~has]).all()
  assert (p[has] >= 0).all()
  np.testing.assert_allclose(p[has].sum(-1), 1.0)
  entropy = dist.normalized_entropy(p[has])
  assert ((entropy >= 0) & (entropy <= 1)).all()
  expected = scipy.stats.entropy(p[has], axis=-1) / math.log(counts.shape[-1])
  np.testing.assert_allclose(entropy, expected, atol=1e-12)


def test_entropy_identical_for_permuted_vote_patterns():
  rng = np.random.default_rng(0)
  base = rng.dirichlet(np.ones(7), size=50)
  permuted = np.stack([row[rng.permutation(7)] for row in base])
  np.testing.assert_array_equal(dist.normalized_entropy(base), dist.normalized_entropy(permuted))
  np.testing.assert_array_equal(dist.normalized_entropy(np.eye(4)), 0.0)
  np.testing.assert_allclose(dist.normalized_entropy(np.full((1, 4), 0.25)), 1.0)


def test_majority_tie_policies():
  p = np.array([[0.4, 0.4, 0.2], [0.2, 0.3, 0.5], [np.nan] * 3, [1 / 3] * 3])
  np.testing.assert_array_equal(dist.majority(p, 'first'), [0, 2, -1, 0])
  np.testing.assert_array_equal(dist.majority(p, 'none'), [-1, 2, -1, -1])
  draws = np.stack([dist.majority(p, 'random', seed=s) for s in range(40)])
  assert set(draws[:, 0]) == {0, 1} and set(draws[:, 3]) == {0, 1, 2}
  assert (draws[:, 1] == 2).all() and (draws[:, 2] == -1).all()
  np.testing.assert_array_equal(dist.majority(p, 'random', seed=3), draws[3])


def test_tertile_edges_put_ties_in_one_level():
  # Three raters over four labels: unanimous, 2-1 and 1-1-1 patterns only.
  counts = np.array([[3, 0, 0, 0]] * 5 + [[2, 1, 0, 0], [0, 1, 2, 0]] * 2 + [[1, 1, 1, 0]] * 3)
  entropy = dist.normalized_entropy(dist.to_distribution(counts))
  edges = dist.tertile_edges(entropy)
  two_one = scipy.stats.entropy([2, 1], base=4)
  assert edges == (0.0, pytest.approx(two_one))
  levels = dist.ambiguity_levels(entropy, edges)
  assert levels.tolist() == ['low'] * 5 + ['medium'] * 4 + ['high'] * 3
  fixed = dist.ambiguity_levels(np.array([0.0, 0.3, 0.31, 0.7, np.nan]), (0.3, 0.6))
  assert fixed.tolist() == ['low', 'low', 'medium', 'high', None]


def test_tertile_edges_keep_medium_when_one_value_dominates():
  # Shares 25% / 60% / 15%: quantiles would put both edges on the middle value.
  entropy = np.array([0.0] * 5 + [0.46] * 12 + [0.79] * 3)
  assert dist.tertile_edges(entropy) == (0.0, 0.46)
  assert dist.tertile_edges(np.array([0.0] * 5 + [0.46] * 15)) == (0.0, 0.46)
  assert dist.tertile_edges(np.array([0.3] * 4)) == (0.3, 0.3)


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.float64, st.integers(3, 60), elements=st.floats(0, 1)))
def test_tertile_edges_are_balanced(entropy):
  e1, e2 = dist.tertile_edges(entropy)
  levels = dist.ambiguity_levels(entropy, (e1, e2))
  assert e1 in entropy and e2 in entropy and e1 <= e2
  for value in np.unique(entropy):
    assert len(set(levels[entropy == value])) == 1
  if len(np.unique(entropy)) == len(entropy):  # no ties: within one item of the exact quantiles
    n = len(entropy)
    assert abs((levels == 'low').sum() - n / 3) <= 0.5 + 1e-9
    assert abs((levels != 'high').sum() - 2 * n / 3) <= 0.5 + 1e-9


# ----------------------------------------------------------------------------------------------
# Combining.


@settings(max_examples=60, deadline=None)
@given(counts_arrays, st.data())
def test_combination_limits(n_h, data):
  n_s = data.draw(hnp.arrays(np.float64, n_h.shape, elements=st.integers(0, 9).map(float)))
  p_s = _distributions_of(n_s)
  p_h = dist.to_distribution(n_h)
  has_h = n_h.sum(-1) > 0
  np.testing.assert_allclose(dist.pooled(n_h, n_s, 0.0)[has_h], p_h[has_h])
  np.testing.assert_allclose(dist.mixture(p_h, p_s, 1.0)[has_h], p_h[has_h])
  np.testing.assert_allclose(dist.mixture(p_h, p_s, 0.0), p_s)
  np.testing.assert_allclose(dist.mixture(p_h, p_s, 1.0)[~has_h], p_s[~has_h])
  np.testing.assert_allclose(dist.dirichlet_posterior(n_h, p_s, 1e-12)[has_h], p_h[has_h], atol=1e-9)
  np.testing.assert_allclose(dist.dirichlet_posterior(n_h, p_s, 1e12), p_s, atol=1e-9)
  np.testing.assert_allclose(dist.dirichlet_posterior(n_h, p_s, math.inf), p_s)
  for p in (dist.pooled(n_h, n_s, 0.7), dist.mixture(p_h, p_s, 0.3), dist.dirichlet_posterior(n_h, p_s, 2.5)):
    valid = ~np.isnan(p).any(-1)
    assert (p[valid] >= 0).all()
    np.testing.assert_allclose(p[valid].sum(-1), 1.0)
  assert not np.isnan(dist.dirichlet_posterior(n_h, p_s, 2.5)).any()


def test_combine_evidence_formulas():
  n_h = np.array([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
  n_s = np.array([[0.0, 2.0, 2.0], [1.0, 3.0, 0.0]])
  p_s = n_s / n_s.sum(-1, keepdims=True)
  pooled, _ = dist.combine_evidence('pooled', n_h, n_s, synthetic_weight=0.5)
  np.testing.assert_allclose(pooled, [[2 / 5, 2 / 5, 1 / 5], [1 / 4, 3 / 4, 0]])
  mixed, _ = dist.combine_evidence('mixture', n_h, n_s, mixture_lambda=0.25)
  np.testing.assert_allclose(mixed[0], [0.25 * 2 / 3, 0.25 / 3 + 0.75 / 2, 0.75 / 2])
  np.testing.assert_allclose(mixed[1], p_s[1])
  posterior, kappa = dist.combine_evidence('dirichlet', n_h, n_s, kappa=2.0)
  assert kappa == 2.0
  np.testing.assert_allclose(posterior, [[2 / 5, 2 / 5, 1 / 5], [1 / 4, 3 / 4, 0]])


def test_kappa_likelihood_matches_explicit_leave_one_out():
  rng = np.random.default_rng(1)
  n_h = rng.integers(0, 4, size=(6, 3)).astype(float)
  p_s = rng.dirichlet(np.ones(3), size=6)
  kappa = 3.7
  expected = 0.0
  for counts, prior in zip(n_h, p_s):
    for label, n in enumerate(counts):
      for _ in range(int(n)):
        rest = counts.copy()
        rest[label] -= 1
        expected += math.log((rest[label] + kappa * prior[label]) / (rest.sum() + kappa))
  assert dist.kappa_log_likelihood(math.log(kappa), n_h, p_s) == pytest.approx(expected)


@pytest.mark.parametrize('planted', [3.0, 30.0])
def test_fit_kappa_recovers_planted_kappa(planted):
  rng = np.random.default_rng(7)
  num_items, num_labels, raters = 4000, 4, 5
  p_s = rng.dirichlet(np.ones(num_labels), size=num_items)
  truth = np.stack([rng.dirichlet(planted * prior) for prior in p_s])
  n_h = np.stack([rng.multinomial(raters, np.maximum(p, 0) / np.maximum(p, 0).sum()) for p in truth]).astype(
    float
  )
  fitted = dist.fit_kappa(n_h, p_s)
  assert planted / 1.6 < fitted < planted * 1.6


def test_fit_kappa_trusts_a_perfect_proxy_and_not_a_useless_one():
  rng = np.random.default_rng(2)
  truth = rng.dirichlet(np.ones(4), size=2000)
  n_h = np.stack([rng.multinomial(4, p) for p in truth]).astype(float)
  assert dist.fit_kappa(n_h, truth) > 50.0
  useless = np.roll(truth, 1, axis=0)
  fitted = dist.fit_kappa(n_h, useless)
  grid = np.linspace(math.log(dist.KAPPA_BOUNDS[0]), math.log(dist.KAPPA_BOUNDS[1]), 801)
  best = math.exp(grid[np.argmax(dist.kappa_log_likelihood(grid, n_h, useless))])
  assert fitted < 5.0 and fitted == pytest.approx(best, rel=0.02)
  assert dist.fit_kappa(n_h, useless, bounds=(20.0, 100.0)) == pytest.approx(20.0)


# ----------------------------------------------------------------------------------------------
# Scores and the distributions table.


def test_scores_distribution_averages_prompts():
  scores = pa.table(
    {
      'utt_id': ['a', 'a', 'b'],
      'prompt_id': ['p1', 'p2', 'p1'],
      'p_sad': [0.2, 0.0, 1.0],
      'p_neutral': [0.6, 1.0, 1.0],
      'p_happy': [0.2, 0.0, 1.0],
      'p_angry': [0.0, 0.0, 1.0],
    }
  )
  ids, p_s, n = dist.scores_distribution(scores, DEMO)
  assert ids.tolist() == ['a', 'b'] and n.tolist() == [2, 1]
  np.testing.assert_allclose(p_s, [[0.8, 0.1, 0.1, 0.0], [0.25] * 4])
  with pytest.raises(InputError, match='p_angry'):
    dist.scores_distribution(scores.drop_columns(['p_angry']), DEMO)
  bad = scores.set_column(2, 'p_sad', pa.array([0.2, -1.0, 1.0]))
  with pytest.raises(InputError, match="'a'"):
    dist.scores_distribution(bad, DEMO)


@pytest.fixture(scope='module')
def small_corpus():
  rng = np.random.default_rng(3)
  utt_ids = [f'u{i:02d}' for i in range(30)]
  utterances = tables.utterances_table(
    {
      'utt_id': utt_ids,
      'speaker': [f's{i % 5}' for i in range(30)],
      'split': ['train' if i % 5 < 3 else ('dev' if i % 5 == 3 else 'test') for i in range(30)],
    }
  )
  rows = []
  for i, utt in enumerate(utt_ids[:-1]):  # the last utterance has no votes
    dominant = DEMO.labels[i % 4]
    for k in range(3):
      label = dominant if rng.random() < 0.6 else DEMO.labels[rng.integers(4)]
      rows.append({'utt_id': utt, 'rater': f'h{k}', 'source': 'human', 'label': label})
    for k in range(5):
      label = dominant if rng.random() < 0.7 else DEMO.labels[rng.integers(4)]
      rows.append({'utt_id': utt, 'rater': f'qwen|p{k}', 'source': 'synthetic', 'label': label})
  rows.append({'utt_id': 'u00', 'rater': 'h9', 'source': 'human', 'label': 'invalid'})
  return utterances, tables.votes_table(rows)


def test_build_distributions_human_only(small_corpus):
  utterances, votes = small_corpus
  table, info = dist.build_distributions(votes, label_set='demo', utterances=utterances)
  assert table.column_names == [
    'utt_id',
    'n_human',
    'n_synthetic',
    'p_neutral',
    'p_happy',
    'p_sad',
    'p_angry',
    'entropy',
    'entropy_human',
    'ambiguity',
    'majority',
    'has_human',
  ]
  assert table.num_rows == 29 and info['n_without_evidence'] == 1
  ids, n_h = dist.vote_counts(votes, DEMO, tables.column(table, 'utt_id'), source='human')
  p = np.stack([tables.column(table, c) for c in tables.label_columns(DEMO.labels)], -1)
  np.testing.assert_allclose(p, n_h / 3.0)
  np.testing.assert_array_equal(tables.column(table, 'n_synthetic'), 5.0)
  train = np.array([int(u[1:]) % 5 < 3 for u in ids])
  assert info['edges'] == list(dist.tertile_edges(tables.column(table, 'entropy')[train]))
  assert info['skipped'] == {dist.SKIP_INVALID: 1}
  assert sum(info['level_counts'].values()) == 29
  assert sum(info['majority_counts'].values()) == 29
  majority = tables.column(table, 'majority')
  assert all(p[i, DEMO.labels.index(m)] == p[i].max() for i, m in enumerate(majority))


def test_build_distributions_dirichlet_components(small_corpus, tmp_path):
  utterances, votes = small_corpus
  table, info = dist.build_distributions(
    votes,
    label_set=DEMO,
    combine='dirichlet',
    kappa=4.0,
    utterances=utterances,
    levels_from_split='all',
    keep_components=True,
  )
  labels = DEMO.labels
  p = np.stack([tables.column(table, f'p_{c}') for c in labels], -1)
  p_h = np.stack([tables.column(table, f'ph_{c}') for c in labels], -1)
  p_s = np.stack([tables.column(table, f'ps_{c}') for c in labels], -1)
  np.testing.assert_allclose(p, (3 * p_h + 4.0 * p_s) / 7.0)
  np.testing.assert_allclose(tables.column(table, 'entropy'), dist.normalized_entropy(p))
  np.testing.assert_allclose(tables.column(table, 'entropy_human'), dist.normalized_entropy(p_h))
  assert info['kappa'] == 4.0 and info['edges_from'].startswith(
    'tertiles of the normalised human entropy of every utterance'
  )
  fitted_table, fitted = dist.build_distributions(
    votes, label_set=DEMO, combine='dirichlet', utterances=utterances
  )
  assert dist.KAPPA_BOUNDS[0] <= fitted['kappa'] <= dist.KAPPA_BOUNDS[1]
  parquet_path, json_path = dist.write_distributions(fitted_table, fitted, str(tmp_path))
  assert tables.read_table(parquet_path).equals(fitted_table)
  with open(json_path, encoding='utf-8') as f:
    assert json.load(f)['kappa'] == fitted['kappa']
  summary = dist.format_summary(fitted)
  assert 'skipped votes: 1' in summary
  # The fitted kappa says what it was fitted on: by default the 'train' utterances with human and
  # synthetic votes (the level split), so held-out human votes never tune the targets.
  train_ids = {
    u for u, s in zip(tables.column(utterances, 'utt_id'), tables.column(utterances, 'split')) if s == 'train'
  }
  ids, n_h = dist.vote_counts(votes, DEMO, tables.column(fitted_table, 'utt_id'), source='human')
  _, n_s = dist.vote_counts(votes, DEMO, ids, source='synthetic')
  on_train = np.array([u in train_ids for u in ids])
  p_s = n_s / n_s.sum(-1, keepdims=True)
  assert fitted['kappa'] == dist.fit_kappa(n_h[on_train], p_s[on_train])
  assert fitted['kappa'] != dist.fit_kappa(n_h, p_s)
  assert fitted['kappa_fit']['split'] == 'train'
  assert fitted['kappa_fit']['n_utterances'] == on_train.sum() < len(ids)
  assert "fitted by empirical Bayes on the human votes of every 'train' utterance" in dist.format_summary(
    fitted
  )
  _, everywhere = dist.build_distributions(
    votes, label_set=DEMO, combine='dirichlet', utterances=utterances, levels_from_split='all'
  )
  summary = dist.format_summary(everywhere)
  rows = votes.to_pylist()
  both = {r['utt_id'] for r in rows if r['source'] == 'human' and r['label'] in DEMO.labels} & {
    r['utt_id'] for r in rows if r['source'] == 'synthetic'
  }
  assert everywhere['kappa_fit']['n_utterances'] == len(both) == 29
  assert f'kappa {everywhere["kappa"]:.4g}, fitted by empirical Bayes on the human votes' in summary
  assert f'({len(both)} utterances)' in summary
  with pytest.raises(InputError, match="fits kappa on split 'validation', but none of its utterances"):
    dist.build_distributions(
      votes, label_set=DEMO, combine='dirichlet', utterances=utterances, levels_from_split='validation'
    )
  assert info['kappa_fit'] is None and 'kappa 4 (given)' in dist.format_summary(info)


def test_build_distributions_scores_and_fixed_edges(small_corpus):
  utterances, votes = small_corpus
  scores = pa.table(
    {
      'utt_id': ['u01', 'u29'],
      'prompt_id': ['p', 'p'],
      'p_neutral': [0.1, 0.7],
      'p_happy': [0.2, 0.1],
      'p_sad': [0.3, 0.1],
      'p_angry': [0.4, 0.1],
    }
  )
  table, info = dist.build_distributions(
    votes,
    synthetic_scores=scores,
    label_set=DEMO,
    combine='pooled',
    synthetic_weight=2.0,
    utterances=utterances,
    fixed_edges=(0.2, 0.6),
  )
  rows = {u: i for i, u in enumerate(tables.column(table, 'utt_id'))}
  assert info['n_items'] == 30 and info['edges_from'].startswith('fixed edges')
  assert table.column('ambiguity')[rows['u29']].as_py() is None
  p_29 = [table.column(f'p_{c}')[rows['u29']].as_py() for c in DEMO.labels]
  np.testing.assert_allclose(p_29, [0.7, 0.1, 0.1, 0.1])
  _, n_h = dist.vote_counts(votes, DEMO, ['u01'], source='human')
  p_01 = [table.column(f'p_{c}')[rows['u01']].as_py() for c in DEMO.labels]
  np.testing.assert_allclose(p_01, (n_h[0] + 2.0 * np.array([0.1, 0.2, 0.3, 0.4])) / 5.0)
  assert info['skipped'][dist.SKIP_SYNTHETIC_WITH_SCORES] == 29 * 5
  assert info['n_without_human'] == 1


def test_targets_without_human_votes_are_flagged_counted_and_left_out(small_corpus):
  utterances, votes = small_corpus
  extra = tables.utterances_table({'utt_id': ['v0', 'v1'], 'speaker': ['s9', 's9'], 'split': ['test'] * 2})
  # v0: only a human vote outside the label set (and an invalid one); v1: no human vote at all.
  added = tables.votes_table(
    [
      {'utt_id': 'v0', 'rater': 'h0', 'source': 'human', 'label': 'frustrated'},
      {'utt_id': 'v0', 'rater': 'h1', 'source': 'human', 'label': 'invalid'},
      {'utt_id': 'v0', 'rater': 'qwen|p0', 'source': 'synthetic', 'label': 'sad'},
      {'utt_id': 'v1', 'rater': 'qwen|p0', 'source': 'synthetic', 'label': 'angry'},
    ]
  )
  table, info = dist.build_distributions(
    tables.concat([votes, added]),
    label_set=DEMO,
    combine='pooled',
    utterances=tables.concat([utterances, extra]),
  )
  # Independent count: utterances whose human votes include none inside the label set.
  in_set = {r['utt_id'] for r in votes.to_pylist() if r['source'] == 'human' and r['label'] in DEMO.labels}
  ids = tables.column(table, 'utt_id')
  np.testing.assert_array_equal(tables.column(table, 'has_human'), [u in in_set for u in ids])
  np.testing.assert_array_equal(tables.column(table, 'n_human')[~tables.column(table, 'has_human')], 0.0)
  assert info['n_without_human'] == 2 and info['n_without_evidence'] == 1  # v0, v1; u29 has no votes
  assert info['without_human'] == {dist.NO_HUMAN_VOTE: 1, dist.NO_HUMAN_VOTE_IN_SET: 1}
  assert 'targets without an in-set human vote' in dist.format_summary(info)
  kept, left_out = dist.human_targets(table)
  assert left_out == 2 and set(tables.column(kept, 'utt_id')) == in_set
  assert dist.human_targets(table, proxy_only=True) == (table, 0)
  old_layout, left_out = dist.human_targets(table.drop_columns(['has_human']))
  assert left_out == 2 and old_layout.num_rows == kept.num_rows


def test_level_definition_is_recorded_and_applied_by_a_later_run(small_corpus, tmp_path):
  utterances, votes = small_corpus
  table, info = dist.build_distributions(
    votes, label_set=DEMO, utterances=utterances, levels_from_split='dev'
  )
  definition = dist.LevelDefinition.from_json(info['levels'])
  dev = tables.column(utterances, 'split') == 'dev'
  dev_entropy = tables.column(table, 'entropy_human')[dev[: table.num_rows]]
  assert definition.edges == dist.tertile_edges(dev_entropy)
  assert definition.split == 'dev' and definition.fitted_on == int(np.isfinite(dev_entropy).sum())
  assert info['edges'] == list(definition.edges) and info['edges_from'] == definition.describe()
  dist.write_distributions(table, info, str(tmp_path / 'first'))
  assert dist.read_level_definition(tmp_path / 'first') == definition
  # A later stage on other votes (the human ones only of the train split) applies the same edges.
  train_votes = votes.filter(pa.array([int(u[1:]) % 5 < 3 for u in tables.column(votes, 'utt_id')]))
  later, later_info = dist.build_distributions(
    train_votes,
    label_set=DEMO,
    level_definition=dist.read_level_definition(tmp_path / 'first' / 'distributions.json'),
  )
  assert later_info['levels'] == info['levels']
  np.testing.assert_array_equal(
    tables.column(later, 'ambiguity'), definition.levels(tables.column(later, 'entropy_human'))
  )
  refit = dist.build_distributions(train_votes, label_set=DEMO)[1]
  assert refit['edges'] != info['edges']  # refitting on these votes would give other edges
  with pytest.raises(InputError, match='not both'):
    dist.build_distributions(votes, label_set=DEMO, fixed_edges=(0.1, 0.2), level_definition=definition)
  (tmp_path / 'bad.json').write_text('{"edges": [0.1, 0.2]}')
  with pytest.raises(InputError, match='no ambiguity level definition'):
    dist.read_level_definition(tmp_path / 'bad.json')


# ----------------------------------------------------------------------------------------------
# CREMA-D: real dense votes, read here with the csv module.


def test_crema_d_voice_distributions(crema_d_dir):
  codes = ('A', 'D', 'F', 'H', 'N', 'S')
  label_set = labels_lib.get_label_set('crema_d')
  with open(crema_d_dir / 'tabulatedVotes.csv', newline='', encoding='utf-8') as f:
    rows = [row for row in csv.DictReader(f) if row[''].startswith('1')]
  assert len(rows) == 7442
  votes = {'utt_id': [], 'label': []}
  for row in rows:
    for code in codes:
      votes['utt_id'] += [row['fileName']] * int(row[code])
      votes['label'] += [labels_lib.from_code('crema_d', code)] * int(row[code])
  votes = tables.votes_table({**votes, 'rater': votes['utt_id'], 'source': ['human'] * len(votes['label'])})
  table, info = dist.build_distributions(votes, label_set=label_set, tie_policy='none')
  assert info['n_items'] == 7442 and info['skipped'] == {}
  by_id = {row['fileName']: row for row in rows}
  order = [by_id[u] for u in tables.column(table, 'utt_id')]
  code_of = {labels_lib.from_code('crema_d', c): c for c in codes}
  counts = np.array([[int(r[code_of[label]]) for label in label_set.labels] for r in order], float)
  expected = counts / np.array([int(r['numResponses']) for r in order], float)[:, None]
  p = np.stack([tables.column(table, c) for c in tables.label_columns(label_set.labels)], -1)
  np.testing.assert_allclose(p, expected, rtol=1e-12)
  np.testing.assert_allclose(
    tables.column(table, 'entropy'), scipy.stats.entropy(expected, axis=-1, base=len(codes)), atol=1e-12
  )
  np.testing.assert_array_equal(tables.column(table, 'n_human'), counts.sum(-1))
  agreement = np.array([float(r['agreement']) for r in order])
  np.testing.assert_allclose(p.max(-1), agreement, atol=1e-9)
  majority = tables.column(table, 'majority')
  for row, label in zip(order, majority):
    if ':' in row['emoVote']:
      assert label is None
    else:
      assert label == labels_lib.from_code('crema_d', row['emoVote'])
  assert info['majority_ties'] == sum(':' in r['emoVote'] for r in rows)
  levels = tables.column(table, 'ambiguity')
  entropy = tables.column(table, 'entropy')
  e1, e2 = info['edges']
  assert (entropy[levels == 'low'] <= e1).all() and (entropy[levels == 'high'] > e2).all()
  assert sum(info['level_counts'].values()) == 7442


# ----------------------------------------------------------------------------------------------
# The launcher.


def test_launcher(small_corpus, tmp_path):
  utterances, votes = small_corpus
  votes_path = tables.write_table(votes, tmp_path / 'votes.parquet')
  utterances_path = tables.write_table(utterances, tmp_path / 'utterances.parquet')
  out_dir = tmp_path / 'out'
  launcher = pathlib.Path(__file__).resolve().parents[1] / 'launch' / 'distributions.py'
  result = subprocess.run(
    [
      sys.executable,
      str(launcher),
      f'--votes={votes_path}',
      f'--utterances={utterances_path}',
      '--label_set=demo',
      '--combine=dirichlet',
      '--components',
      '--levels_from=dev',
      f'--out_dir={out_dir}',
    ],
    capture_output=True,
    text=True,
    check=False,
  )
  assert result.returncode == 0, result.stderr
  table = tables.read_table(out_dir / 'distributions.parquet')
  with open(out_dir / 'distributions.json', encoding='utf-8') as f:
    info = json.load(f)
  expected, expected_info = dist.build_distributions(
    votes,
    label_set='demo',
    combine='dirichlet',
    utterances=utterances,
    levels_from_split='dev',
    keep_components=True,
  )
  assert table.equals(expected)
  assert info['kappa'] == pytest.approx(expected_info['kappa'])
  assert info['edges_from'].startswith('tertiles of the normalised human entropy of split dev')
  assert dist.format_summary(expected_info) in result.stdout
  # A second run applies the first run's level definition instead of fitting its own.
  again = subprocess.run(
    [
      sys.executable,
      str(launcher),
      f'--votes={votes_path}',
      '--label_set=demo',
      f'--level_definition={out_dir}',
      f'--out_dir={tmp_path / "again"}',
    ],
    capture_output=True,
    text=True,
    check=False,
  )
  assert again.returncode == 0, again.stderr
  assert dist.read_level_definition(tmp_path / 'again') == dist.read_level_definition(out_dir)
  assert info['levels']['split'] == 'dev'
