"""The SQLite store's wake-ups: an idle worker hears at once of jobs another process
adds, through a Unix socket beside the file; a socket whose process died is removed; a
folder that cannot hold sockets leaves the worker polling as before."""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from errands import Errands, JobStatus
from errands._lifecycle import serving
from errands.sqlite import SQLiteStore
from errands.sqlite._wake import MAX_SOCKET_PATH, Listener, Waker, wake_folder
from tests.conftest import wait_finished, wait_until


def double(n: int) -> int:
    return 2 * n


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Errands, Errands]]:
    """Two instances on one file: a worker's and an adder's, as two processes would be
    (each its own store, connections, sockets)."""
    worker, adder = (
        Errands(f"sqlite:///{tmp_path}/jobs.db"),
        Errands(f"sqlite:///{tmp_path}/jobs.db"),
    )
    worker.task(name="double")(double)
    adder.task(name="double")(double)
    yield worker, adder
    for one in (worker, adder):
        one._core.backend.store.close()  # type: ignore[attr-defined]


def test_an_idle_worker_runs_a_job_another_process_adds_without_waiting_for_its_poll(
    pair: tuple[Errands, Errands], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(SQLiteStore, "poll_announced", 60.0)  # only a wake-up wakes it
    worker, adder = pair
    doubled = adder._core.tasks["double"]
    with TestClient(FastAPI(lifespan=worker.lifespan)):
        wait_until(lambda: any(wake_folder(tmp_path / "jobs.db").glob("*.sock")))
        time.sleep(0.3)  # idle: its first polls are done
        for n in (21, 22):  # twice: the first may have been the sender's first listing
            job = adder.add_task(doubled, n)
            record = wait_finished(worker, job.id, timeout=10)
            assert record.status is JobStatus.SUCCEEDED and record.result == 2 * n
    # Stopped: its socket is gone with it.
    wait_until(lambda: not any(wake_folder(tmp_path / "jobs.db").glob("*.sock")))


def test_a_socket_whose_process_died_is_removed_by_the_next_sender(tmp_path: Path) -> None:
    folder = wake_folder(tmp_path / "jobs.db")
    folder.mkdir()
    dead = folder / "1-000000000000.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as gone:
        gone.bind(str(dead))  # bound, then closed: what a SIGKILLed process leaves
    woken = threading.Event()
    alive = Listener(folder, woken.set)
    try:
        waker = Waker(folder)
        waker.announce()
        assert woken.wait(5)
        assert not dead.exists() and Path(alive.path).exists()
    finally:
        alive.close()


def test_a_path_too_long_for_a_socket_has_its_folder_in_one_of_the_users_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    folder = wake_folder(deep / "jobs.db")
    assert folder.parent == Path(tempfile.gettempdir()) / f"errands-{os.getuid()}"
    assert len(os.fsencode(folder)) + 31 <= MAX_SOCKET_PATH
    assert wake_folder(deep / "." / "jobs.db") == folder  # every process finds the same
    woken = threading.Event()
    listener = Listener(folder, woken.set)
    try:
        Waker(folder).announce()
        assert woken.wait(5)
    finally:
        listener.close()


def test_a_folder_that_cannot_hold_sockets_leaves_the_worker_polling(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wake_folder(tmp_path / "jobs.db").write_text("not a folder")
    errands = Errands(f"sqlite:///{tmp_path}/jobs.db")
    doubled = errands.task(name="double")(double)
    with caplog.at_level("INFO", logger="errands"), TestClient(FastAPI(lifespan=errands.lifespan)):
        job = errands.add_task(doubled, 4)
        assert wait_finished(errands, job.id, timeout=10).result == 8
    assert "it cannot be woken through a socket" in caplog.text
    errands._core.backend.store.close()  # type: ignore[attr-defined]


def test_a_folder_that_is_a_link_or_others_may_write_to_is_not_used(tmp_path: Path) -> None:
    """Not followed, not listened in, and nothing in it is removed: a wake-up then is
    left to the poll."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "notes.sock").write_text("a file of someone else's")
    folder = wake_folder(tmp_path / "jobs.db")
    folder.symlink_to(elsewhere)
    with pytest.raises(PermissionError, match="not a folder of this user's alone"):
        Listener(folder, lambda: None)
    Waker(folder).announce()
    assert (elsewhere / "notes.sock").read_text() == "a file of someone else's"
    folder.unlink()
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)  # (the umask is not asked)
    with pytest.raises(PermissionError):
        Listener(folder, lambda: None)


def test_only_a_socket_nobody_reads_is_removed_never_another_file(tmp_path: Path) -> None:
    folder = wake_folder(tmp_path / "jobs.db")
    folder.mkdir(mode=0o700)
    stray = folder / "stray.sock"
    stray.write_text("not a socket")
    woken = threading.Event()
    listener = Listener(folder, woken.set)
    try:
        Waker(folder).announce()
        assert woken.wait(5)
        assert stray.read_text() == "not a socket"
    finally:
        listener.close()


def test_a_listener_whose_socket_has_a_high_descriptor_is_woken(tmp_path: Path) -> None:
    """A busy process has descriptors past 1024 (where select() gives up)."""
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        woken = threading.Event()
        listener = Listener(wake_folder(tmp_path / "jobs.db"), woken.set)
        assert listener._socket.fileno() >= 1024
        try:
            waker = Waker(listener_folder := wake_folder(tmp_path / "jobs.db"))
            assert listener_folder.exists()
            for _ in range(3):  # a burst, then more: each wakes it
                waker.announce()
                waker.announce()
                assert woken.wait(5)
                woken.clear()
        finally:
            listener.close()
    finally:
        for fd in held:
            os.close(fd)


def test_a_worker_that_owns_its_loop_claims_there_but_never_waits_there_for_the_file(
    tmp_path: Path,
) -> None:
    """``errands worker`` claims on its event loop when idle (no hop to a thread and
    back); while another process holds the file, the claim goes through the commit
    thread, which waits, and the loop goes on meanwhile."""
    errands = Errands(f"sqlite:///{tmp_path}/jobs.db")
    doubled = errands.task(name="double")(double)
    store = errands._core.backend.store  # type: ignore[attr-defined]
    gaps: list[float] = []

    async def main() -> tuple[list[object], float, bool]:
        async with serving(errands._core, owns_loop=True):
            first = await errands.add_task(doubled, 1).wait(timeout=10)
            claimed_on_loop = getattr(store._local, "now", None) is not None
            job = errands.add_task(doubled.options(delay=0.3), 5)  # due while the file is held
            other = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
            until = time.monotonic() + 1.0
            last = time.monotonic()
            while last < until:
                await asyncio.sleep(0.01)
                gaps.append(time.monotonic() - last)
                last = time.monotonic()
            released = time.time()
            other.execute("ROLLBACK")
            other.close()
            second = await job.wait(timeout=10)
        return [first, second], released, claimed_on_loop

    (first, second), released, claimed_on_loop = asyncio.run(main())
    assert claimed_on_loop
    assert first.status is JobStatus.SUCCEEDED and first.result == 2  # type: ignore[attr-defined]
    assert second.status is JobStatus.SUCCEEDED and second.result == 10  # type: ignore[attr-defined]
    assert second.attempts == 1  # type: ignore[attr-defined]
    assert second.finished_at.timestamp() >= released - 0.05  # type: ignore[attr-defined]
    assert max(gaps) < 0.5  # the loop was not held for the second the file was
    store.close()


def test_a_listener_on_an_event_loop_wakes_it_there_and_stops_from_any_thread(
    tmp_path: Path,
) -> None:
    """A worker's listener is one of its loop's readers (no thread of its own); the
    store may close it from another thread."""
    folder = wake_folder(tmp_path / "jobs.db")

    async def main() -> Listener:
        loop = asyncio.get_running_loop()
        woken = asyncio.Event()
        threads: set[int] = set()

        def wake() -> None:
            threads.add(threading.get_ident())
            woken.set()

        listener = Listener(folder, wake, loop=loop)
        assert listener._thread is None
        waker = Waker(folder)
        for _ in range(3):  # a burst, then more: each wakes it
            waker.announce()
            waker.announce()
            await asyncio.wait_for(woken.wait(), 5)
            woken.clear()
        assert threads == {threading.get_ident()}  # on the loop's own thread
        await asyncio.to_thread(listener.close, wait=True)
        await asyncio.sleep(0.1)  # (the loop takes its reader back at its next turn)
        return listener

    listener = asyncio.run(main())
    assert not os.path.exists(listener.path)
    assert listener._socket.fileno() == -1  # closed, and no longer one of the loop's
