"""One process at a time per run directory: an fcntl lock file with the holder's pid.

  with RunLock(workdir):
    ...  # train, generate, convert: nobody else writes here meanwhile

A second process gets an InputError naming the holder's pid. The lock is the kernel's (``flock``), so
a lock left by a process that died (kill -9 included) is free again and is simply taken over; the pid
in the file is only there to name the holder.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from typing import ClassVar

from perax.core.errors import InputError

LOCK_FILE = '.perax.lock'


class RunLock:
  """An exclusive lock on ``directory`` (created when missing), held until ``release`` or exit.

  Re-entrant within one process: locking a directory this process already holds is a no-op, so a
  pipeline that locks its out_dir can call stage functions that lock sub-directories or the same one.
  """

  _held: ClassVar[dict[str, int]] = {}  # realpath -> depth, for this process

  def __init__(self, directory: os.PathLike | str, what: str = 'run directory'):
    self.directory = os.path.realpath(os.fspath(directory))
    self.what = what
    self.path = os.path.join(self.directory, LOCK_FILE)
    self._fd: int | None = None

  def acquire(self) -> RunLock:
    if self.directory in RunLock._held:
      RunLock._held[self.directory] += 1
      return self
    os.makedirs(self.directory, exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.read(fd, 64).decode('ascii', 'replace').strip() or 'unknown'
      os.close(fd)
      raise InputError(
        f'this {self.what} is in use by another perax process (pid {holder}); '
        'wait for it to finish or stop it, then rerun',
        path=self.directory,
      ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f'{os.getpid()}\n'.encode('ascii'))
    self._fd = fd
    RunLock._held[self.directory] = 1
    return self

  def release(self) -> None:
    depth = RunLock._held.get(self.directory, 0)
    if depth > 1:
      RunLock._held[self.directory] = depth - 1
      return
    RunLock._held.pop(self.directory, None)
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self) -> RunLock:
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


@contextlib.contextmanager
def locked_for_the_run(directory: os.PathLike | str, what: str) -> Iterator[None]:
  """:class:`RunLock` for a run of one or several processes (perax.core.distributed): process 0 holds
  the lock while the block runs, and when it is taken every process raises the InputError. A
  collective step: every process of a multi-process run enters it (perax.core.rendezvous)."""
  import jax  # pylint: disable=import-outside-toplevel  (core stays importable without a backend)

  from perax.core import rendezvous  # pylint: disable=import-outside-toplevel

  lock = RunLock(directory, what) if jax.process_index() == 0 else None

  def acquire() -> None:
    if lock is not None:
      lock.acquire()

  rendezvous.run_everywhere(f'{what} lock', acquire)
  try:
    yield
  finally:
    if lock is not None:
      lock.release()
