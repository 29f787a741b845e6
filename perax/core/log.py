"""perax's one logging path: every message a stage or launcher shows goes through here.

Lines have one look, on stderr:

  14:02:31 [proxies] 120/535 utt (22.4%) 8.31 utt/s, elapsed 0:00:14, ETA 0:00:50
  14:02:45 [proxies] warning: skipped 2 clips (NaN samples): a.wav, b.wav

``info`` and ``warning`` take the message and optionally the stage (or job) it belongs to. They use
the stdlib logger ``perax`` with a handler of its own (not propagated, so absl's root handler does not
print it twice); tests may read it with ``capsys`` (stderr is looked up at every line).
"""

from __future__ import annotations

import logging
import sys
import time

LOGGER_NAME = 'perax'


class _StderrHandler(logging.Handler):
  """Writes to the *current* sys.stderr, so redirected or captured stderr sees every line."""

  def emit(self, record: logging.LogRecord) -> None:
    try:
      sys.stderr.write(self.format(record) + '\n')
      sys.stderr.flush()
    except Exception:  # logging must never take a job down
      self.handleError(record)


class _Formatter(logging.Formatter):
  def format(self, record: logging.LogRecord) -> str:
    stamp = time.strftime('%H:%M:%S', time.localtime(record.created))
    where = f' [{record.stage}]' if getattr(record, 'stage', None) else ''
    level = '' if record.levelno < logging.WARNING else f'{record.levelname.lower()}: '
    return f'{stamp}{where} {level}{record.getMessage()}'


def logger() -> logging.Logger:
  """The ``perax`` logger, with its handler installed once."""
  log = logging.getLogger(LOGGER_NAME)
  if not any(isinstance(h, _StderrHandler) for h in log.handlers):
    handler = _StderrHandler()
    handler.setFormatter(_Formatter())
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
  return log


def info(message: str, stage: str | None = None) -> None:
  """Shows ``message`` (one line), prefixed with ``[stage]`` when given."""
  logger().info(message, extra={'stage': stage})


def warning(message: str, stage: str | None = None) -> None:
  """Shows ``message`` as a warning: something was skipped, clipped or assumed."""
  logger().warning(message, extra={'stage': stage})


def set_quiet(quiet: bool) -> None:
  """Quiet shows warnings only (tests and benchmarks that print their own results)."""
  logger().setLevel(logging.WARNING if quiet else logging.INFO)
