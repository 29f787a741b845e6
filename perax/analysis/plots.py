"""The analysis plots, drawn with matplotlib's object API on the Agg canvas (no pyplot, no display).

Every function writes one PNG atomically and returns its path.  Rows are the analysis tables as lists
of dicts (``condition, level, metric, value, ci_low, ci_high, n`` and, for the sparse-vs-dense study,
``k``); confidence intervals are drawn as error bars or bands.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from perax.distributions.levels import ALL, LEVELS

LEVEL_COLORS = {'low': '#4c9f70', 'medium': '#e0a030', 'high': '#c8553d', ALL: '#5577aa'}

Rows = Sequence[Mapping[str, object]]


def _figure(width: float, height: float, bottom: float = 0.6) -> Figure:
  """A figure of ``width`` x ``height`` inches with fixed margins (``bottom`` in inches).

  Fixed margins instead of a layout engine: constrained layout doubles the drawing time.
  """
  figure = Figure(figsize=(width, height))
  FigureCanvasAgg(figure)
  figure.subplots_adjust(
    left=0.7 / width,
    right=1 - 0.2 / width,
    bottom=bottom / height,
    top=1 - 0.45 / height,
    wspace=0.35,
    hspace=0.7,
  )
  return figure


def _save(figure: Figure, path: os.PathLike | str) -> str:
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f'{path}.tmp-{os.getpid()}'
  figure.savefig(tmp, format='png', dpi=100)
  os.replace(tmp, path)
  return path


def _ordered(values, order: Sequence[str] = ()) -> list[str]:
  """The distinct ``values``: those in ``order`` first, in that order, then the rest as they come."""
  present = list(dict.fromkeys(values))
  return [v for v in order if v in present] + [v for v in present if v not in order]


def _error_bars(values: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
  """[2, n] non-negative distances from each value to its CI bounds (0 where a bound is NaN)."""
  return np.nan_to_num(np.stack([values - low, high - values]).clip(min=0))


def ambiguity_histogram(
  entropy: np.ndarray,
  levels: np.ndarray,
  edges: tuple[float, float],
  path: os.PathLike | str,
  what: str = 'human',
  bins: int = 20,
) -> str:
  """Histogram of normalised entropy, stacked by ambiguity level, with the tertile edges marked.

  Args:
    entropy: [N] normalised entropy of the distributions that set the levels, in [0, 1].
    levels: [N] low|medium|high.
    edges: (e1, e2), the level edges.
    path: the PNG to write.
    what: whose distributions they are (the x-axis label).
    bins: equal-width bins over [0, 1].
  """
  figure = _figure(7, 4)
  axes = figure.add_subplot()
  names = _ordered(levels, LEVELS)
  stacks = [entropy[levels == name] for name in names]
  labels = [f'{name} (n={len(s)})' for name, s in zip(names, stacks)]
  axes.hist(
    stacks,
    bins=np.linspace(0, 1, bins + 1),
    stacked=True,
    label=labels,
    color=[LEVEL_COLORS.get(n, 'grey') for n in names],
  )
  for edge in edges:
    axes.axvline(edge, color='black', linestyle='--', linewidth=1)
  axes.set_xlabel(f'normalised entropy of the {what} distribution')
  axes.set_ylabel('utterances')
  axes.set_title(f'Ambiguity levels (edges {edges[0]:.3g}, {edges[1]:.3g})')
  axes.legend()
  return _save(figure, path)


def metric_bars(rows: Rows, metrics: Sequence[str], path: os.PathLike | str) -> str:
  """One panel per metric: bars per level, grouped by condition, with CI error bars.

  Args:
    rows: alignment rows (condition, level, metric, value, ci_low, ci_high).
    metrics: the metrics to draw, one panel each, in order.
    path: the PNG to write.
  """
  conditions = _ordered([r['condition'] for r in rows])
  levels = _ordered([r['level'] for r in rows], LEVELS + (ALL,))
  columns = min(3, len(metrics))
  figure = _figure(5 * columns, 3.6 * -(-len(metrics) // columns), bottom=1.0)
  width = 0.8 / len(levels)
  x = np.arange(len(conditions))
  for panel, metric in enumerate(metrics):
    axes = figure.add_subplot(-(-len(metrics) // columns), columns, panel + 1)
    for j, level in enumerate(levels):
      cells = {r['condition']: r for r in rows if r['metric'] == metric and r['level'] == level}
      values = np.array([cells[c]['value'] if c in cells else np.nan for c in conditions], float)
      low = np.array([cells[c]['ci_low'] if c in cells else np.nan for c in conditions], float)
      high = np.array([cells[c]['ci_high'] if c in cells else np.nan for c in conditions], float)
      axes.bar(
        x + (j - (len(levels) - 1) / 2) * width,
        values,
        width,
        label=level,
        color=LEVEL_COLORS.get(level, 'grey'),
        yerr=_error_bars(values, low, high),
        capsize=2,
      )
    axes.set_xticks(x, conditions, rotation=30, ha='right')
    axes.set_title(metric)
    if panel == 0:
      axes.legend(fontsize='small')
  return _save(figure, path)


def example_distributions(
  labels: Sequence[str],
  examples: Sequence[tuple[str, np.ndarray, np.ndarray]],
  names: tuple[str, str],
  path: os.PathLike | str,
) -> str:
  """Side-by-side bars of two distributions for a few utterances.

  Args:
    labels: the C class names.
    examples: (title, p_a [C], p_b [C]) per panel.
    names: legend names of the two distributions (e.g. ('human', 'synthetic')).
    path: the PNG to write.
  """
  columns = min(3, max(len(examples), 1))
  rows = max(-(-len(examples) // columns), 1)
  figure = _figure(4.5 * columns, 3 * rows, bottom=1.0)
  x = np.arange(len(labels))
  for panel, (title, p_a, p_b) in enumerate(examples):
    axes = figure.add_subplot(rows, columns, panel + 1)
    axes.bar(x - 0.2, p_a, 0.4, label=names[0], color='#5577aa')
    axes.bar(x + 0.2, p_b, 0.4, label=names[1], color='#e0a030')
    axes.set_xticks(x, labels, rotation=45, ha='right', fontsize='small')
    axes.set_ylim(0, 1)
    axes.set_title(title, fontsize='small')
    if panel == 0:
      axes.legend(fontsize='small')
  return _save(figure, path)


def confusion_matrix(
  confusion: np.ndarray, labels: Sequence[str], names: tuple[str, str], path: os.PathLike | str
) -> str:
  """A confusion heatmap, shaded by row share and annotated with counts.

  Args:
    confusion: [C, C] counts; rows are ``names[0]``'s majority label, columns ``names[1]``'s.
    labels: the C class names.
    names: what the rows and the columns are.
    path: the PNG to write.
  """
  figure = _figure(1.0 * len(labels) + 2.5, 0.9 * len(labels) + 1.8, bottom=1.2)
  axes = figure.add_subplot()
  totals = confusion.sum(axis=1, keepdims=True)
  shares = np.divide(confusion, totals, out=np.zeros(confusion.shape), where=totals > 0)
  image = axes.imshow(shares, cmap='Blues', vmin=0, vmax=1)
  for i in range(len(labels)):
    for j in range(len(labels)):
      axes.text(
        j,
        i,
        str(int(confusion[i, j])),
        ha='center',
        va='center',
        color='white' if shares[i, j] > 0.5 else 'black',
        fontsize='small',
      )
  ticks = np.arange(len(labels))
  axes.set_xticks(ticks, labels, rotation=45, ha='right')
  axes.set_yticks(ticks, labels)
  axes.set_ylabel(f'{names[0]} majority')
  axes.set_xlabel(f'{names[1]} majority')
  agreement = np.trace(confusion) / max(confusion.sum(), 1)
  axes.set_title(f'Majority labels: agreement {agreement:.3f}')
  figure.colorbar(image, ax=axes, label='share of row')
  return _save(figure, path)


def sparse_dense_curves(rows: Rows, metric: str, path: os.PathLike | str) -> str:
  """Error against the dense reference as a function of k, one panel per level, CI bands.

  Args:
    rows: sparse-vs-dense rows (k, condition, level, metric, value, ci_low, ci_high).
    metric: which metric to draw.
    path: the PNG to write.
  """
  rows = [r for r in rows if r['metric'] == metric]
  levels = _ordered([r['level'] for r in rows], LEVELS + (ALL,))
  conditions = _ordered([r['condition'] for r in rows])
  figure = _figure(4.2 * max(len(levels), 1), 3.6)
  for panel, level in enumerate(levels):
    axes = figure.add_subplot(1, max(len(levels), 1), panel + 1)
    for condition in conditions:
      cells = sorted(
        (r['k'], r['value'], r['ci_low'], r['ci_high'])
        for r in rows
        if r['level'] == level and r['condition'] == condition
      )
      if not cells:
        continue
      k, value, low, high = (np.array(v, float) for v in zip(*cells))
      (line,) = axes.plot(k, value, marker='o', label=condition)
      axes.fill_between(k, low, high, color=line.get_color(), alpha=0.2)
    axes.set_xlabel('human votes kept (k)')
    axes.set_ylabel(f'{metric} vs dense reference')
    axes.set_title(f'{level} ambiguity')
    if panel == 0:
      axes.legend(fontsize='small')
  return _save(figure, path)


def loss_curve(
  steps: Sequence[int], losses: Sequence[float], path: os.PathLike | str, title: str = 'Training loss'
) -> str:
  """The per-step training loss.

  Args:
    steps: [S] step numbers, increasing.
    losses: [S] loss at each step.
    path: the PNG to write.
    title: the plot's title.
  """
  figure = _figure(6.0, 3.2)
  axes = figure.add_subplot(1, 1, 1)
  axes.plot(np.asarray(steps), np.asarray(losses, np.float64), color=LEVEL_COLORS[ALL])
  axes.set_xlabel('step')
  axes.set_ylabel('loss')
  axes.set_title(title)
  axes.grid(alpha=0.3)
  return _save(figure, path)
