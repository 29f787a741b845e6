"""The HTML/Markdown report: self-contained, tables and plots present, and it renders in Chromium."""

import base64
import html.parser
import json
import os
import pathlib
import re
import shutil
import subprocess

import numpy as np
import pyarrow as pa
import pytest
from chromium_check import rendered_body

from perax.analysis import plots, report
from perax.core.errors import InputError


class _Collector(html.parser.HTMLParser):
  """Collects img sources, every href/src, and table cell texts of an HTML page."""

  def __init__(self):
    super().__init__()
    self.images, self.links, self.cells = [], [], []
    self._in_cell = False

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    if tag == 'img':
      self.images.append(attrs['src'])
    self.links += [attrs[k] for k in ('href', 'src') if k in attrs]
    self._in_cell = tag in ('td', 'th')

  def handle_endtag(self, tag):
    self._in_cell = False

  def handle_data(self, data):
    if self._in_cell:
      self.cells.append(data)


@pytest.fixture(scope='module')
def written(tmp_path_factory):
  """A report with two plots drawn by perax.analysis.plots, a pyarrow table and a row-dict table."""
  out = tmp_path_factory.mktemp('report')
  rng = np.random.default_rng(0)
  entropy = rng.random(300)
  levels = np.where(entropy <= 0.3, 'low', np.where(entropy <= 0.6, 'medium', 'high'))
  histogram = plots.ambiguity_histogram(entropy, levels, (0.3, 0.6), out / 'histogram.png')
  confusion = plots.confusion_matrix(
    np.array([[5, 1], [2, 7]]), ('happy', 'sad'), ('human', 'proxy'), out / 'confusion.png'
  )
  sections = [
    report.Section(
      'What ran',
      paragraphs=('A <test> & its data.',),
      facts={'command': 'analyze --x=1', 'utterances': 300, 'kappa': 2.5},
    ),
    report.Section(
      'Tables',
      tables=(
        report.Table('Arrow table', pa.table({'level': ['low', 'high'], 'js': [0.123456, 0.5]})),
        report.Table('Row dicts', [{'k': 1, 'value': float('nan')}, {'k': 2, 'value': 3.0}]),
      ),
      figures=(report.Figure('Entropy histogram', histogram), report.Figure('Confusion', confusion)),
    ),
  ]
  paths = report.write_report(out, 'Test report', sections)
  return out, paths, (histogram, confusion)


def test_html_is_self_contained_and_embeds_the_plots(written):
  _, paths, figures = written
  text = pathlib.Path(paths.html).read_text(encoding='utf-8')
  page = _Collector()
  page.feed(text)
  assert len(page.images) == 2
  for source, figure in zip(page.images, figures):
    assert source.startswith('data:image/png;base64,')
    assert base64.b64decode(source.split(',', 1)[1]) == pathlib.Path(figure).read_bytes()
  assert all(link.startswith('data:') for link in page.links)
  assert not re.search(r'https?://', text)
  assert '&lt;test&gt; &amp; its data.' in text
  assert '0.1235' in page.cells and '0.5' in page.cells and 'high' in page.cells


def test_markdown_links_plots_relatively_and_formats_cells(written):
  out, paths, _ = written
  text = pathlib.Path(paths.markdown).read_text(encoding='utf-8')
  assert text.startswith('# Test report\n')
  assert '![Entropy histogram](histogram.png)' in text
  assert '- **utterances**: 300' in text
  assert '| level | js |' in text and '| low | 0.1235 |' in text
  assert '| 1 | n/a |' in text  # NaN is an empty statistic: n/a
  assert os.path.exists(out / 'histogram.png')


def test_figure_that_is_not_a_png_is_an_input_error(tmp_path):
  fake = tmp_path / 'plot.png'
  fake.write_text('not a png')
  with pytest.raises(InputError, match='not a PNG'):
    report.write_report(tmp_path, 't', [report.Section('s', figures=(report.Figure('f', fake),))])
  with pytest.raises(InputError, match='cannot read figure'):
    report.write_report(
      tmp_path, 't', [report.Section('s', figures=(report.Figure('f', str(tmp_path / 'missing.png')),))]
    )


def test_plots_render_in_headless_chromium(written, tmp_path):
  _, paths, _ = written
  body = rendered_body(pathlib.Path(paths.html), tmp_path)
  assert 'data-images-total="2"' in body
  assert 'data-images-broken="0"' in body


def test_chromium_check_catches_a_broken_image(tmp_path):
  broken = tmp_path / 'broken.png'
  broken.write_bytes(report.PNG_SIGNATURE + b'garbage, not image data')
  paths = report.write_report(
    tmp_path, 'Broken', [report.Section('s', figures=(report.Figure('broken', broken),))]
  )
  body = rendered_body(pathlib.Path(paths.html), tmp_path)
  assert 'data-images-total="1"' in body
  assert 'data-images-broken="1"' in body


# ----------------------------------------------------------------------------------------------
# Cells, captions and the balance warning.


def test_cells_print_missing_statistics_as_na_and_tiny_values_as_zero():
  assert report.format_value(float('nan')) == 'n/a' and report.format_value(None) == 'n/a'
  assert report.format_value(-5.1e-16) == '0' and report.format_value(np.float32(3e-13)) == '0'
  assert report.format_value(2e-12) == '2e-12' and report.format_value(0.123456) == '0.1235'
  assert report.format_value(np.int64(7)) == '7'
  from perax.analysis import writers

  assert writers.interval_cell(float('nan'), float('nan'), float('nan')) == 'n/a'
  assert writers.interval_cell(0.5, None, None) == '0.5'
  assert writers.interval_cell(-1e-17, -0.1, 0.2) == '0 [-0.1, 0.2]'
  rows = [
    {'condition': 'proxy', 'level': 'low', 'metric': 'kl', 'value': None, 'ci_low': None, 'ci_high': None}
  ]
  assert writers.pivot(rows, ('condition',), 'level') == [{'condition': 'proxy', 'low': 'n/a'}]


def test_balance_note_only_when_a_class_is_missing():
  labels = ('neutral', 'happy', 'sad', 'angry')
  assert report.balance_note({'neutral': 3, 'happy': 3, 'sad': 3, 'angry': 3}, labels) is None
  assert report.balance_note([3, 3, 3, 3], labels) is None
  note = report.balance_note({'neutral': 5, 'happy': 2}, labels)
  assert 'not balanced' in note and '2 of 4 classes' in note and 'sad, angry' in note
  assert report.balance_note([1, 0, 1, 1], labels).count('happy') == 1
  with pytest.raises(ValueError, match='3 counts for 4 labels'):
    report.balance_note([1, 1, 1], labels)


def test_captions_name_their_reference():
  assert report.against('JS divergence by level', report.DENSE_HUMAN) == (
    'JS divergence by level, against the dense human reference'
  )
  assert 'proxy evidence' in report.against('Test metrics', report.HUMAN_PROXY)
  assert report.against('x', report.SPARSE_HUMAN) == 'x, against the sparse human votes'
  with pytest.raises(ValueError, match='unknown reference'):
    report.against('x', 'dense')


# ----------------------------------------------------------------------------------------------
# Tables fit a 1280 px page.


def _wide_report(tmp_path):
  """A report with a typical analysis table (5 k columns of 'value [low, high]' cells) and an absurd one."""
  cell = '0.1234 [0.1111, 0.1357]'
  typical = [
    {'condition': c, 'level': level, **{str(k): cell for k in range(1, 6)}}
    for c in ('human', 'proxy', 'dirichlet')
    for level in ('low', 'medium', 'high', 'all')
  ]
  absurd = [{f'a very long column header number {i}': cell for i in range(30)}]
  sections = [
    report.Section(
      'Tables',
      warnings=('not balanced: 1 of 4 classes have no utterance (sad).',),
      tables=(report.Table('Typical', typical), report.Table('Absurd', absurd)),
    )
  ]
  return report.write_report(tmp_path, 'Wide', sections)


def test_tables_sit_in_scroll_boxes_with_wrapping_headers(tmp_path):
  paths = _wide_report(tmp_path)
  text = pathlib.Path(paths.html).read_text(encoding='utf-8')
  assert text.count('<div class="table-box"><table>') == text.count('<table>') == 2
  style = re.search(r'<style>(.*?)</style>', text, flags=re.S).group(1)
  assert re.search(r'\.table-box \{[^}]*overflow-x: auto', style)
  assert re.search(r'\bth \{[^}]*white-space: normal', style)
  assert re.search(r'\btable \{[^}]*font-size: 0\.8em', style)
  assert '<p class="warning">Warning: not balanced' in text
  assert '> **Warning:** not balanced' in pathlib.Path(paths.markdown).read_text(encoding='utf-8')


def test_tables_fit_a_1280_px_page_in_chromium(tmp_path):
  chromium = shutil.which('chromium')
  if chromium is None:
    pytest.skip('chromium not installed (CI installs it: apt-get install chromium)')
  from chromium_check import CHROMIUM_FLAGS

  paths = _wide_report(tmp_path)
  result = subprocess.run(
    [
      chromium,
      *CHROMIUM_FLAGS,
      '--window-size=1280,900',
      f'--user-data-dir={tmp_path / "profile"}',
      '--dump-dom',
      pathlib.Path(paths.html).as_uri(),
    ],
    capture_output=True,
    text=True,
    timeout=120,
    check=True,
  )
  body = re.search(r'<body[^>]*>', result.stdout).group(0)
  assert 'data-page-overflow="false"' in body  # the page never scrolls sideways
  assert 'data-tables-scrolling="1"' in body  # only the absurd table needs its own scroll bar


def test_write_rows_is_atomic_and_strict(tmp_path):
  from perax.analysis import writers

  rows = [
    {'level': 'low', 'value': float('nan'), 'n': np.int64(0)},
    {'level': 'all', 'value': -1e-17, 'n': 3},
  ]
  paths = writers.write_rows(rows, ('level', 'value', 'n'), str(tmp_path), 'levels', 'Levels, in words')
  assert json.loads(pathlib.Path(paths['json']).read_text(), parse_constant=pytest.fail) == [
    {'level': 'low', 'value': None, 'n': 0},
    {'level': 'all', 'value': -1e-17, 'n': 3},
  ]
  assert pathlib.Path(paths['csv']).read_text().splitlines() == ['level,value,n', 'low,,0', 'all,-1e-17,3']
  markdown = pathlib.Path(paths['md']).read_text()
  assert markdown.startswith('**Levels, in words**') and '| low | n/a | 0 |' in markdown
  assert '| all | 0 | 3 |' in markdown
  assert sorted(p.name for p in tmp_path.iterdir()) == ['levels.csv', 'levels.json', 'levels.md']
