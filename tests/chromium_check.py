"""Opens a page in headless Chromium (Debian's package; .ci/run installs it) and returns its <body>."""

import pathlib
import re
import shutil
import subprocess

import pytest

CHROMIUM_FLAGS = (
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
)


def rendered_body(html_path: pathlib.Path, tmp_path: pathlib.Path) -> str:
  """The <body> tag of the page after load, as headless Chromium's --dump-dom shows it.

  perax reports mark their <body> with data-images-total and data-images-broken once loaded.
  """
  chromium = shutil.which('chromium')
  if chromium is None:
    pytest.skip('chromium not installed (CI installs it: apt-get install chromium)')
  result = subprocess.run(
    [chromium, *CHROMIUM_FLAGS, f'--user-data-dir={tmp_path / "profile"}', '--dump-dom', html_path.as_uri()],
    capture_output=True,
    text=True,
    timeout=120,
    check=True,
  )
  match = re.search(r'<body[^>]*>', result.stdout)
  assert match, result.stdout[-2000:] + result.stderr[-2000:]
  return match.group(0)
