"""jaxcnn.workdir_lock: acquiring creates the workdir and writes who holds
it (this pid and host); while one holder lives, another lock on the same
workdir is refused with WorkdirBusy naming that holder, whether from this
process (flock locks belong to each open file, so a second open conflicts
on Linux) or from another one; release and the context manager's exit free
it; and a holder killed with SIGKILL leaves nothing in the way (the kernel
drops its flock). The other process imports only jaxcnn.workdir_lock (no
JAX), so it starts in milliseconds.
"""
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from jaxcnn.workdir_lock import WorkdirBusy, WorkdirLock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def holder_text(workdir) -> str:
  return (workdir / ".lock").read_text()


def test_acquire_creates_the_workdir_and_names_the_holder(tmp_path):
  workdir = tmp_path / "new" / "run"
  lock = WorkdirLock(workdir).acquire()
  try:
    assert workdir.is_dir()
    assert holder_text(workdir).startswith(
        f"pid {os.getpid()} on {socket.gethostname()} since ")
  finally:
    lock.release()


def test_a_second_lock_is_refused_until_the_first_is_released(tmp_path):
  first = WorkdirLock(tmp_path).acquire()
  with pytest.raises(WorkdirBusy) as busy:
    WorkdirLock(tmp_path).acquire()
  message = str(busy.value)
  assert str(tmp_path) in message
  assert f"pid {os.getpid()} on {socket.gethostname()}" in message
  # The refused attempt left the holder's text alone.
  assert holder_text(tmp_path).startswith(f"pid {os.getpid()} ")
  first.release()
  first.release()  # A second release does nothing.
  with WorkdirLock(tmp_path):
    with pytest.raises(WorkdirBusy):
      WorkdirLock(tmp_path).acquire()
  # The context manager's exit released it.
  WorkdirLock(tmp_path).acquire().release()


def test_another_process_is_refused_while_it_lives_not_once_killed(tmp_path):
  child = subprocess.Popen(
      [sys.executable, "-c", textwrap.dedent(f"""
          import sys, time
          sys.path.insert(0, {REPO!r})
          from jaxcnn.workdir_lock import WorkdirLock
          lock = WorkdirLock({str(tmp_path)!r}).acquire()  # Kept: held.
          print("held", "jax" in sys.modules, flush=True)
          time.sleep(60)
          """)],
      stdout=subprocess.PIPE, text=True)
  try:
    # It holds the lock, and imported no JAX to take it.
    assert child.stdout.readline().split() == ["held", "False"]
    with pytest.raises(WorkdirBusy, match=f"pid {child.pid} on "):
      WorkdirLock(tmp_path).acquire()
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    # It never released the lock; the kernel dropped it with the process.
    assert holder_text(tmp_path).startswith(f"pid {child.pid} ")
    lock = WorkdirLock(tmp_path).acquire()
    assert holder_text(tmp_path).startswith(f"pid {os.getpid()} ")
    lock.release()
  finally:
    if child.poll() is None:
      child.kill()
      child.wait()
    child.stdout.close()
