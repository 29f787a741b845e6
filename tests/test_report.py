"""The HTML/Markdown report: self-contained, tables and plots present, and it renders in Chromium."""

import base64
import html.parser
import os
import pathlib
import re

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
