"""Self-contained reports: one HTML file (plots embedded as base64 PNG data URIs) and a Markdown summary.

A report is a title and a list of :class:`Section`; each section holds paragraphs, key facts (what ran,
on what data), tables and figures.  The analysis launcher writes one, and the end-to-end pipeline
passes its own sections (training and evaluation metrics) to the same :func:`write_report`.

The HTML has no external assets: styles are inline, images are ``data:image/png;base64,...`` URIs.
A short inline script marks, once the page has loaded, how many images decoded
(``<body data-images-total=... data-images-broken=...>``), whether the page is wider than the window
(``data-page-overflow``) and how many tables need their own horizontal scroll bar
(``data-tables-scrolling``), so a headless browser can check that every plot renders and that the
tables fit a 1280 px page.

Tables fit the page: a smaller font, headers that wrap, and, as a last resort, a horizontal scroll
bar inside the table's own box (never hidden columns). Cells print missing or NaN statistics as
'n/a' and values within 1e-12 of zero as 0. The Markdown summary refers to the PNG files by their
path relative to the report.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa

from perax.core import atomic
from perax.core.errors import InputError

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
NOT_AVAILABLE = 'n/a'
ZERO_TOLERANCE = 1e-12

# The reference a table's estimates are scored against; every table's caption names one.
SPARSE_HUMAN = 'sparse human'
DENSE_HUMAN = 'dense human'
HUMAN_PROXY = 'human + proxy'
REFERENCE_WORDS = {
  SPARSE_HUMAN: 'the sparse human votes',
  DENSE_HUMAN: 'the dense human reference',
  HUMAN_PROXY: 'human + proxy targets (the targets contain proxy evidence)',
}

_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 76em; padding: 0 1em; color: #222; }
h1 { border-bottom: 2px solid #444; }
h2 { border-bottom: 1px solid #aaa; margin-top: 2em; }
.table-box { max-width: 100%; overflow-x: auto; margin: 0.5em 0 1.5em; }
table { border-collapse: collapse; font-size: 0.8em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; }
th { background: #eee; white-space: normal; overflow-wrap: anywhere; max-width: 10em; vertical-align: bottom; }
td { white-space: nowrap; }
td.text { text-align: left; }
caption { caption-side: top; text-align: left; font-weight: bold; padding: 0.3em 0; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dt { font-weight: bold; }
dd { margin: 0; overflow-wrap: anywhere; }
figure { margin: 1em 0; }
figure img { max-width: 100%; }
figcaption { font-style: italic; }
p.warning { border-left: 4px solid #c8553d; padding-left: 0.6em; }
"""

_IMAGE_CHECK = """
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (img) { return !(img.complete && img.naturalWidth > 0); });
  document.body.setAttribute('data-images-total', String(images.length));
  document.body.setAttribute('data-images-broken', String(broken.length));
  var page = document.documentElement;
  document.body.setAttribute('data-page-overflow', String(page.scrollWidth > page.clientWidth));
  var boxes = Array.prototype.slice.call(document.querySelectorAll('.table-box'));
  var scrolling = boxes.filter(function (box) { return box.scrollWidth > box.clientWidth; });
  document.body.setAttribute('data-tables-scrolling', String(scrolling.length));
});
"""


@dataclasses.dataclass(frozen=True)
class Table:
  """A table for a report.

  Attributes:
    caption: one line saying what the table shows.
    rows: a pyarrow table, or a sequence of row dicts sharing their keys (the first row's keys, in
      order, are the columns).
  """

  caption: str
  rows: pa.Table | Sequence[Mapping[str, object]]

  def columns_and_rows(self) -> tuple[list[str], list[list[object]]]:
    """The column names and the rows as lists of values, in column order."""
    if isinstance(self.rows, pa.Table):
      names = list(self.rows.column_names)
      return names, [[row[n] for n in names] for row in self.rows.to_pylist()]
    rows = list(self.rows)
    if not rows:
      return [], []
    names = list(rows[0])
    return names, [[row.get(n) for n in names] for row in rows]


@dataclasses.dataclass(frozen=True)
class Figure:
  """A PNG plot for a report.

  Attributes:
    caption: what the plot shows.
    path: the PNG file; the HTML embeds its bytes, the Markdown links to it.
  """

  caption: str
  path: str


@dataclasses.dataclass(frozen=True)
class Section:
  """One section of a report, rendered in this order: paragraphs, facts, tables, figures.

  Attributes:
    title: the section heading.
    warnings: sentences the reader must not miss (e.g. :func:`balance_note`), shown first.
    paragraphs: plain-text paragraphs (escaped in HTML, written as they are in Markdown).
    facts: key -> value pairs such as the command, the data and the number of items.
    tables: the section's tables.
    figures: the section's plots.
  """

  title: str
  paragraphs: Sequence[str] = ()
  facts: Mapping[str, object] = dataclasses.field(default_factory=dict)
  tables: Sequence[Table] = ()
  figures: Sequence[Figure] = ()
  warnings: Sequence[str] = ()


@dataclasses.dataclass(frozen=True)
class ReportPaths:
  html: str
  markdown: str


def format_value(value: object) -> str:
  """A cell as text: floats with 4 significant digits, |x| < 1e-12 as 0, NaN and None as 'n/a'."""
  if value is None:
    return NOT_AVAILABLE
  if isinstance(value, (float, np.floating)):
    if math.isnan(value):
      return NOT_AVAILABLE
    if abs(value) < ZERO_TOLERANCE:
      return '0'
    return f'{float(value):.4g}'
  if isinstance(value, np.integer):
    return str(int(value))
  return str(value)


def against(what: str, reference: str) -> str:
  """A caption naming its reference: ``against('JS divergence by level', DENSE_HUMAN)`` ->
  'JS divergence by level, against the dense human reference'."""
  if reference not in REFERENCE_WORDS:
    raise ValueError(f'unknown reference {reference!r}; known: {sorted(REFERENCE_WORDS)}')
  return f'{what}, against {REFERENCE_WORDS[reference]}'


def balance_note(class_counts: Mapping[str, int] | Sequence[int], labels: Sequence[str]) -> str | None:
  """None when every class of ``labels`` is present, else a warning sentence naming the missing ones.

  A set may be called "balanced" only when this returns None.

  Args:
    class_counts: label -> count, or counts in ``labels`` order.
    labels: every class of the label set.
  """
  if isinstance(class_counts, Mapping):
    counts = [int(class_counts.get(label, 0)) for label in labels]
  else:
    counts = [int(c) for c in class_counts]
    if len(counts) != len(labels):
      raise ValueError(f'{len(counts)} counts for {len(labels)} labels')
  missing = [label for label, n in zip(labels, counts) if n <= 0]
  if not missing:
    return None
  present = len(labels) - len(missing)
  return (
    f'not balanced: {len(missing)} of {len(labels)} classes have no utterance ({", ".join(missing)}); '
    f'only {present} classes are present, so the set is not called balanced.'
  )


def _is_numeric(value: object) -> bool:
  return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _png_data_uri(path: str) -> str:
  """The PNG at ``path`` as a data URI; raises InputError if it is missing or not a PNG."""
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except OSError as e:
    raise InputError(f'cannot read figure: {e.strerror}', path=path) from e
  if not data.startswith(PNG_SIGNATURE):
    raise InputError('figure is not a PNG file', path=path)
  return 'data:image/png;base64,' + base64.b64encode(data).decode('ascii')


def _html_table(table: Table) -> str:
  names, rows = table.columns_and_rows()
  out = ['<div class="table-box"><table>', f'<caption>{html.escape(table.caption)}</caption>', '<tr>']
  out += [f'<th>{html.escape(n)}</th>' for n in names]
  out.append('</tr>')
  for row in rows:
    cells = []
    for value in row:
      css = '' if _is_numeric(value) else ' class="text"'
      cells.append(f'<td{css}>{html.escape(format_value(value))}</td>')
    out.append('<tr>' + ''.join(cells) + '</tr>')
  out.append('</table></div>')
  return '\n'.join(out)


def _html_section(section: Section) -> str:
  out = [f'<section>\n<h2>{html.escape(section.title)}</h2>']
  out += [f'<p class="warning">Warning: {html.escape(w)}</p>' for w in section.warnings]
  out += [f'<p>{html.escape(p)}</p>' for p in section.paragraphs]
  if section.facts:
    out.append('<dl>')
    for key, value in section.facts.items():
      out.append(f'<dt>{html.escape(str(key))}</dt><dd>{html.escape(format_value(value))}</dd>')
    out.append('</dl>')
  out += [_html_table(t) for t in section.tables]
  for figure in section.figures:
    caption = html.escape(figure.caption)
    out.append(
      f'<figure><img src="{_png_data_uri(figure.path)}" alt="{caption}">'
      f'<figcaption>{caption}</figcaption></figure>'
    )
  out.append('</section>')
  return '\n'.join(out)


def render_html(title: str, sections: Sequence[Section]) -> str:
  """The whole report as one HTML document with no external references."""
  body = '\n'.join(_html_section(s) for s in sections)
  return (
    f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
    f'<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n'
    f'<h1>{html.escape(title)}</h1>\n{body}\n<script>{_IMAGE_CHECK}</script>\n</body>\n</html>\n'
  )


def _markdown_cell(value: object) -> str:
  return format_value(value).replace('|', '\\|').replace('\n', ' ')


def markdown_table(table: Table) -> str:
  """A GitHub-flavoured Markdown table with its caption in bold above it."""
  names, rows = table.columns_and_rows()
  lines = [f'**{table.caption}**', '']
  if not names:
    return '\n'.join(lines + ['(empty)'])
  lines.append('| ' + ' | '.join(_markdown_cell(n) for n in names) + ' |')
  lines.append(
    '|' + '|'.join('---:' if rows and _is_numeric(v) else '---' for v in (rows[0] if rows else names)) + '|'
  )
  lines += ['| ' + ' | '.join(_markdown_cell(v) for v in row) + ' |' for row in rows]
  return '\n'.join(lines)


def render_markdown(title: str, sections: Sequence[Section], relative_to: str) -> str:
  """The report as Markdown; figures link to their PNG paths relative to ``relative_to``."""
  out = [f'# {title}']
  for section in sections:
    out += ['', f'## {section.title}']
    for warning in section.warnings:
      out += ['', f'> **Warning:** {warning}']
    for paragraph in section.paragraphs:
      out += ['', paragraph]
    if section.facts:
      out.append('')
      out += [f'- **{key}**: {format_value(value)}' for key, value in section.facts.items()]
    for table in section.tables:
      out += ['', markdown_table(table)]
    for figure in section.figures:
      out += ['', f'![{figure.caption}]({os.path.relpath(figure.path, relative_to)})']
  return '\n'.join(out) + '\n'


def write_report(
  out_dir: os.PathLike | str, title: str, sections: Sequence[Section], basename: str = 'report'
) -> ReportPaths:
  """Writes ``<out_dir>/<basename>.html`` (self-contained) and ``<out_dir>/<basename>.md``, atomically.

  Args:
    out_dir: the directory to write into (created if needed).
    title: the report's title.
    sections: the sections in order.
    basename: the file name without extension.

  Returns:
    The paths of the two files.
  """
  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  paths = ReportPaths(
    html=os.path.join(out_dir, f'{basename}.html'), markdown=os.path.join(out_dir, f'{basename}.md')
  )
  atomic.write_text(paths.html, render_html(title, sections))
  atomic.write_text(paths.markdown, render_markdown(title, sections, out_dir))
  return paths
