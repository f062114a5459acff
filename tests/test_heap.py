"""Heaps trimmed once heavy work is over, and while work keeps coming, at most so often."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from assistant.ops import heap
from assistant.ops.heap import Trimmer


class Calls:
    def __init__(self) -> None:
        self.at: list[float] = []
        self.done = threading.Event()

    def __call__(self, pad: int) -> int:
        assert pad == 0
        self.at.append(time.monotonic())
        self.done.set()
        return 1


def test_trimmed_once_the_work_has_been_over_for_the_idle_time() -> None:
    calls = Calls()
    trimmer = Trimmer(0.2, malloc_trim=calls)
    with trimmer.heavy():
        ended = time.monotonic()
    assert calls.done.wait(5)
    assert calls.at[0] - ended >= 0.19 and trimmer.trims == 1


def test_never_while_heavy_work_runs_and_once_per_spell_of_work() -> None:
    calls = Calls()
    trimmer = Trimmer(0.2, malloc_trim=calls)
    with trimmer.heavy():
        with trimmer.heavy():
            pass
        time.sleep(0.5)  # one piece of work is over, the other still runs
        assert not calls.at
        for _ in range(3):  # more work, begun before the first piece ended
            with trimmer.heavy():
                pass
    assert calls.done.wait(5)
    time.sleep(0.5)
    assert len(calls.at) == 1


def test_work_that_never_pauses_is_trimmed_every_so_often() -> None:
    """Work in overlapping pieces, never idle for the idle time: trimmed every ``busy``
    seconds all the same, beside the work."""
    calls = Calls()
    trimmer = Trimmer(0.5, busy=0.3, malloc_trim=calls)
    started = time.monotonic()
    with trimmer.heavy():
        while time.monotonic() - started < 1.6:
            with trimmer.heavy():
                time.sleep(0.02)
        assert 3 <= len(calls.at) <= 6, calls.at
        # Never more often than every 0.3 s (less a late start of one trim).
        assert all(b - a >= 0.15 for a, b in zip(calls.at, calls.at[1:], strict=False))


def test_without_glibc_heavy_work_runs_all_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap, "_glibc", lambda name: None)
    trimmer = Trimmer(0.01)
    assert not trimmer.available
    assert not heap.limit_heaps(2)
    with trimmer.heavy():
        ran = True
    trimmer.trim()
    assert ran and trimmer.trims == 0


def test_glibc_trims_this_process() -> None:
    trimmer = Trimmer()
    if not trimmer.available:
        pytest.skip("not linked with glibc")
    trimmer.trim()
    assert trimmer.trims == 1


_COUNT_HEAPS = """
import ctypes, os, sys, tempfile, threading
from assistant.ops.heap import limit_heaps
if sys.argv[1] != "0":
    assert limit_heaps(int(sys.argv[1]))
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.fopen.restype = ctypes.c_void_p
started, hold = threading.Barrier(7), threading.Event()

def work():
    libc.malloc(1 << 16)  # each thread's first allocation picks its heap
    started.wait()
    hold.wait()

threads = [threading.Thread(target=work) for _ in range(6)]
for t in threads:
    t.start()
started.wait()
with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, "info.xml").encode()
    f = libc.fopen(path, b"w")
    libc.malloc_info(0, ctypes.c_void_p(f))
    libc.fclose(ctypes.c_void_p(f))
    print(open(path).read().count("<heap nr="))
hold.set()
"""


def heaps_with(limit: int) -> int:
    done = subprocess.run([sys.executable, "-c", _COUNT_HEAPS, str(limit)], check=True,
                          cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=60)
    return int(done.stdout)


def test_threads_share_no_more_heaps_than_allowed() -> None:
    if not Trimmer().available:
        pytest.skip("not linked with glibc")
    assert heaps_with(0) > 2  # glibc's own limit: eight per core
    assert heaps_with(2) == 2
    assert heaps_with(1) == 1


def test_no_heap_at_all_is_refused() -> None:
    with pytest.raises(ValueError):
        heap.limit_heaps(0)
