"""One trainer per workdir: an exclusive flock on WORKDIR/.lock.

The kernel drops a flock when its process dies, SIGKILL included, so a lock
left by a killed run never blocks the next one; the file's text only says who
held it last.
"""
from __future__ import annotations

import fcntl
import os
import pathlib
import socket
import time


class WorkdirBusy(RuntimeError):
  """Another live process trains in this workdir."""


class WorkdirLock:

  def __init__(self, workdir):
    self.path = pathlib.Path(workdir) / ".lock"
    self._file = None

  def acquire(self) -> "WorkdirLock":
    self.path.parent.mkdir(parents=True, exist_ok=True)
    f = open(self.path, "a+")
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or "another process"
      f.close()
      raise WorkdirBusy(
          f"{self.path.parent} is in use by {holder}; wait for it to finish, "
          "stop it, or use another --workdir") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()} since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}")
    f.flush()
    self._file = f
    return self

  def release(self) -> None:
    if self._file is not None:
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
