"""Tests of perax.distributions.metrics against scipy and hand computations, plus property tests."""

import math

import numpy as np
import pytest
import scipy.spatial.distance
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from perax import distributions as dist
from perax.distributions import metrics


def _rows(num_items, num_labels):
  """Strategy for [N, C] distributions (some entries exactly zero)."""
  weights = hnp.arrays(
    np.float64, (num_items, num_labels), elements=st.one_of(st.just(0.0), st.floats(0.01, 10.0))
  )
  return weights.map(lambda w: np.where(w.sum(-1, keepdims=True) > 0, w, 1.0)).map(
    lambda w: w / w.sum(-1, keepdims=True)
  )


pairs = st.integers(1, 8).flatmap(
  lambda n: st.integers(2, 6).flatmap(lambda c: st.tuples(_rows(n, c), _rows(n, c)))
)


@pytest.fixture(scope='module')
def random_pair():
  rng = np.random.default_rng(0)
  ref = rng.dirichlet(np.full(5, 0.7), size=300)
  pred = 0.6 * ref + 0.4 * rng.dirichlet(np.ones(5), size=300)
  pred[:10, 0] = 0.0  # a few zeros where ref may have mass
  return ref, pred / pred.sum(-1, keepdims=True)


def test_against_scipy(random_pair):
  ref, pred = random_pair
  smoothed = (pred + metrics.KL_EPSILON) / (1 + 5 * metrics.KL_EPSILON)
  np.testing.assert_allclose(metrics.kl(ref, pred), scipy.stats.entropy(ref, smoothed, axis=-1))
  expected_js = np.array([scipy.spatial.distance.jensenshannon(r, q, base=2) for r, q in zip(ref, pred)])
  np.testing.assert_allclose(metrics.js_distance(ref, pred), expected_js, atol=1e-7)
  np.testing.assert_allclose(metrics.js_divergence(ref, pred), expected_js**2, atol=1e-12)
  np.testing.assert_allclose(
    metrics.cosine(ref, pred), [1 - scipy.spatial.distance.cosine(r, q) for r, q in zip(ref, pred)]
  )
  entropy_ref, entropy_pred = dist.normalized_entropy(ref), dist.normalized_entropy(pred)
  result = metrics.distribution_metrics(ref, pred)
  assert result['entropy_pearson'] == pytest.approx(scipy.stats.pearsonr(entropy_ref, entropy_pred).statistic)
  assert result['entropy_spearman'] == pytest.approx(
    scipy.stats.spearmanr(entropy_ref, entropy_pred).statistic
  )
  assert result['bhattacharyya'] == pytest.approx(np.mean(np.sum(np.sqrt(ref * pred), -1)))
  assert result['total_variation'] == pytest.approx(
    np.mean([0.5 * scipy.spatial.distance.cityblock(r, q) for r, q in zip(ref, pred)])
  )
  flat_ref, flat_pred = ref.ravel(), pred.ravel()
  assert result['r2'] == pytest.approx(
    1 - np.sum((flat_ref - flat_pred) ** 2) / np.sum((flat_ref - 0.2) ** 2)
  )
  assert result['n'] == 300


def test_spearman_with_ties_matches_scipy():
  x = np.array([0.0, 0.0, 0.5, 0.5, 0.5, 1.0, 0.2])
  y = np.array([0.1, 0.3, 0.3, 0.2, 0.9, 0.9, 0.0])
  assert metrics.spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic)
  assert math.isnan(metrics.pearson(np.ones(4), np.arange(4.0)))


def test_correlation_of_a_constant_entropy_is_nan_not_rounding_noise():
  # Seven equal entropies whose mean is not exactly that value (x - mean(x) = 5.6e-17, not 0).
  x = np.full(7, scipy.stats.entropy([0.75, 0.25], base=4))
  assert (x - x.mean()).any()
  assert math.isnan(metrics.pearson(x, np.arange(7.0)))
  assert math.isnan(metrics.pearson(np.arange(7.0), x))
  # Seven 3-angry-1-sad reference rows on different labels: one entropy; pred rows vary.
  ref = np.array([np.roll([0.75, 0.25, 0.0, 0.0], i) for i in range(7)])
  pred = np.random.default_rng(0).dirichlet(np.ones(4), size=7)
  assert math.isnan(metrics.distribution_metrics(ref, pred)['entropy_pearson'])


def test_classification_by_hand():
  # Reference majority labels 0 0 1 1 2 (ties excluded), predictions 0 1 1 1 0:
  #   label 0: TP 1, FN 1, FP 1 -> recall 1/2, F1 2/4; label 1: TP 2, FP 1 -> recall 1, F1 4/5;
  #   label 2: TP 0, FN 1 -> recall 0, F1 0.
  ref = np.array(
    [[0.8, 0.1, 0.1], [0.6, 0.2, 0.2], [0.1, 0.7, 0.2], [0, 1, 0], [0.1, 0.2, 0.7], [0.4, 0.4, 0.2]]
  )
  pred = np.array(
    [[0.9, 0.1, 0], [0.3, 0.5, 0.2], [0.2, 0.6, 0.2], [0.1, 0.8, 0.1], [0.5, 0.2, 0.3], [0.1, 0.1, 0.8]]
  )
  result = metrics.distribution_metrics(ref, pred)
  assert result['n_ties'] == 1
  assert result['accuracy'] == pytest.approx(3 / 5)
  assert result['unweighted_accuracy'] == pytest.approx((1 / 2 + 1 + 0) / 3)
  assert result['macro_f1'] == pytest.approx((2 / 4 + 4 / 5 + 0) / 3)
  first = metrics.distribution_metrics(ref, pred, ref_ties='first')
  assert first['accuracy'] == pytest.approx(3 / 6)


def test_macro_f1_counts_labels_only_predicted():
  # Reference labels 0, 0; predictions 0, 1: label 1 has F1 0 and counts in the macro average.
  true, predicted = np.array([0, 0]), np.array([0, 1])
  result = metrics.classification_metrics(true, predicted, num_labels=3)
  assert result['macro_f1'] == pytest.approx((2 / 3 + 0) / 2)
  assert result['unweighted_accuracy'] == pytest.approx(1 / 2)


@settings(max_examples=80, deadline=None)
@given(pairs)
def test_properties(pair):
  ref, pred = pair
  js = metrics.js_divergence(ref, pred)
  np.testing.assert_allclose(js, metrics.js_divergence(pred, ref), atol=1e-12)
  assert ((js >= 0) & (js <= 1)).all()
  for per_item in (
    metrics.bhattacharyya(ref, pred),
    metrics.total_variation(ref, pred),
    metrics.cosine(ref, pred),
    metrics.js_distance(ref, pred),
  ):
    assert ((per_item >= -1e-12) & (per_item <= 1 + 1e-12)).all()
  assert (metrics.kl(ref, pred) >= -1e-12).all()
  # Pinsker-type bounds tie TV to BC: 1 - BC <= TV <= sqrt(1 - BC^2).
  bc, tv = metrics.bhattacharyya(ref, pred), metrics.total_variation(ref, pred)
  assert (1 - bc <= tv + 1e-9).all() and (tv <= np.sqrt(np.maximum(1 - bc**2, 0)) + 1e-9).all()
  same = metrics.distribution_metrics(ref, ref)
  assert same['js_divergence'] == pytest.approx(0, abs=1e-12)
  assert same['kl'] == pytest.approx(0, abs=1e-5)
  assert same['bhattacharyya'] == pytest.approx(1)
  assert same['total_variation'] == pytest.approx(0)
  assert same['accuracy'] == 1.0 or same['n_ties'] == len(ref)


def test_metrics_by_level():
  rng = np.random.default_rng(4)
  ref = rng.dirichlet(np.ones(4), size=40)
  pred = rng.dirichlet(np.ones(4), size=40)
  levels = np.array(['low'] * 15 + ['high'] * 20 + [None] * 5, dtype=object)
  result = metrics.metrics_by_level(ref, pred, levels)
  assert set(result) == {'low', 'medium', 'high', 'all'}
  assert result['medium']['n'] == 0 and math.isnan(result['medium']['js_divergence'])
  assert result['all']['n'] == 40 and result['high']['n'] == 20
  assert result['low']['js_divergence'] == pytest.approx(metrics.js_divergence(ref[:15], pred[:15]).mean())


def test_rejects_bad_input():
  with pytest.raises(ValueError, match='sums'):
    metrics.kl(np.array([[0.5, 0.6]]), np.array([[0.5, 0.5]]))
  with pytest.raises(ValueError, match='non-finite'):
    metrics.js_divergence(np.array([[np.nan, 1.0]]), np.array([[0.5, 0.5]]))
  with pytest.raises(ValueError, match='shape|\\[N, C\\]'):
    metrics.cosine(np.ones((2, 2)) / 2, np.ones((3, 2)) / 2)
