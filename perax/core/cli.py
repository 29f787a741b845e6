"""What every launcher shares: absl's app.run, with bad input and interrupts reported as one clear line.

- Bad input (perax.core.errors.InputError) ends the launcher with exit code 2 and its message (file and
  line), not a traceback.
- Ctrl-C (SIGINT) and SIGTERM end it with exit code 130 and 143 (128 + the signal, as shells report
  them) and one line naming what was saved and how to resume: rerun the same command. Every perax
  job resumes from what it finds on disk (proxy shards, training checkpoints, pipeline stage records).
  A launcher can say more precisely what was saved with :func:`on_interrupt`.
"""

from __future__ import annotations

import contextlib
import shlex
import signal
import sys
from collections.abc import Callable, Sequence

from absl import app, flags, logging

from perax.core import compile_cache, distributed
from perax.core.errors import InputError

SIGINT_EXIT, SIGTERM_EXIT = 130, 143
_DIRECTORY_FLAGS = ('out_dir', 'workdir')
_describers: list[Callable[[], str]] = []


class Terminated(BaseException):
  """Raised in the main thread when the process receives SIGTERM (like KeyboardInterrupt for SIGINT)."""


def on_interrupt(describe: Callable[[], str]) -> None:
  """Sets what an interrupt's line says was saved: ``describe()`` is called when the interrupt comes.

  The last one set wins. Without one, the line names the launcher's --out_dir / --workdir.
  """
  _describers[:] = [describe]


def _default_saved() -> str:
  named = [
    f'--{name}={flags.FLAGS[name].value}'
    for name in _DIRECTORY_FLAGS
    if name in flags.FLAGS and flags.FLAGS[name].value
  ]
  if not named:
    return 'files are written atomically, so nothing half-written was left'
  return f'everything finished in {" and ".join(named)} is kept (files are written atomically)'


def interrupt_line(signal_name: str) -> str:
  """The one line printed on an interrupt: what was saved, and the command that resumes."""
  saved = _default_saved()
  if _describers:
    with contextlib.suppress(Exception):  # the line must come out whatever the describer does
      saved = _describers[0]()
  command = shlex.join(['python', *sys.argv])
  return f'interrupted ({signal_name}): {saved}; to resume, rerun the same command: {command}'


def _raise_terminated(signum, frame) -> None:
  raise Terminated()


def _ignore_signals() -> None:
  """A second Ctrl-C while the line is printed must not turn it into a traceback."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.signal(signal.SIGTERM, signal.SIG_IGN)


def run(main: Callable[[Sequence[str]], object]) -> None:
  """Runs an absl ``main``: InputError -> exit 2, Ctrl-C -> 130, SIGTERM -> 143, each with one line.

  Library logs (Orbax's, JAX's) are kept to warnings unless --verbosity is given. Before ``main``, the
  process joins a multi-process run when its flags ask (perax.core.distributed) and JAX's persistent
  compilation cache is set up (perax.core.compile_cache).
  """

  def guarded(argv: Sequence[str]) -> object:
    if not flags.FLAGS['verbosity'].present:
      logging.set_verbosity(logging.WARNING)
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
      distributed.initialize_from_flags()
      compile_cache.configure_from_flags()
      return main(argv)
    except InputError as error:
      print(f'error: {error}', file=sys.stderr)
      sys.exit(2)
    except KeyboardInterrupt:
      _ignore_signals()
      print(interrupt_line('Ctrl-C'), file=sys.stderr)
      sys.exit(SIGINT_EXIT)
    except Terminated:
      _ignore_signals()
      print(interrupt_line('SIGTERM'), file=sys.stderr)
      sys.exit(SIGTERM_EXIT)

  app.run(guarded)
