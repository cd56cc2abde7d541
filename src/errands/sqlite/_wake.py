"""Wake-ups for the SQLite store: a worker hears at once of jobs another process adds.

Each process whose worker claims from a file binds a Unix datagram socket of its own
in a folder beside the file (``jobs.db-wake/``, or one under the temporary folder
named after the file's path where that path is too long for a socket's). A write
that makes jobs claimable now (adding jobs nobody holds, releasing a request's jobs,
giving one back, ``errands.retry``, a lease found run out) sends an empty datagram to
every socket there once its transaction has committed: the worker claims at once
instead of at its next poll. The worker's event loop reads its socket (one of the
loop's readers), so a wake-up costs no thread. It still polls, less often: jobs that
fall due later (a delay, a retry's backoff) are announced by nobody, and a datagram
may be lost (a full socket buffer: it is not waited for).

Sending never blocks and never fails a write: a socket nobody reads (its process
died) is removed; any other error leaves the poll to do the work. The folder is
listed again at most every ``LIST_EVERY`` seconds, or when a send fails, so a
request's commit costs a ``sendto`` a listening process (a few microseconds).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import logging
import os
import socket
import stat
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger("errands")

#: How often a sender lists the folder again for sockets made since (seconds).
LIST_EVERY = 1.0
#: How often the listening thread looks whether it should stop (seconds).
STOP_CHECK = 0.5
#: The longest path a Unix socket may have (``sun_path``, less its final NUL).
MAX_SOCKET_PATH = 107
#: A socket's name in the folder: ``<pid>-<12 hex>.sock``.
NAME_LENGTH = 30


def wake_folder(database: Path) -> Path:
    """The folder of the file's sockets: beside it, or, if that path would be too long
    for a socket's, in a folder of this user's (``$XDG_RUNTIME_DIR``, else one of its
    own under the temporary folder), named after the file's real path, so that every
    process of the user that opens it finds the same."""
    real = Path(os.path.realpath(database))
    beside = real.with_name(real.name + "-wake")
    if len(os.fsencode(beside)) + 1 + NAME_LENGTH <= MAX_SOCKET_PATH:
        return beside
    digest = hashlib.sha256(os.fsencode(real)).hexdigest()[:24]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return (Path(runtime) if runtime else own_temporary()) / f"errands-wake-{digest}"


def own_temporary() -> Path:
    """This user's folder under the temporary folder (made private, as the folders in
    it, by ``private_folder``)."""
    return Path(tempfile.gettempdir()) / f"errands-{os.getuid()}"


def private_folder(folder: Path, *, make: bool) -> bool:
    """Whether ``folder`` is one to trust with this user's sockets: a real folder (not
    a link), this user's, that nobody else may write to; made so (``0700``) if missing
    and ``make``. Anything else is not used: wake-ups are then left to the poll."""
    for path in (folder.parent, folder) if folder.parent == own_temporary() else (folder,):
        if make:
            with contextlib.suppress(FileExistsError):
                path.mkdir(mode=0o700)
        try:
            found = os.lstat(path)
        except OSError:
            return False
        if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.getuid():
            return False
        if found.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return False
    return True


_sender: socket.socket | None = None
_sender_pid = 0
_sender_lock = threading.Lock()


def sender() -> socket.socket:
    """This process's socket to send wake-ups from (one for every store; a forked child
    makes its own), closed at exit."""
    global _sender, _sender_pid
    with _sender_lock:
        if _sender is None or _sender_pid != os.getpid():
            _sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            _sender.setblocking(False)
            _sender_pid = os.getpid()
        return _sender


@atexit.register
def _close_sender() -> None:
    if _sender is not None and _sender_pid == os.getpid():
        _sender.close()


class Waker:
    """The sending side: ``announce`` wakes every listening process (never blocks)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._paths: list[str] = []
        self._listed = -LIST_EVERY
        self._lock = threading.Lock()

    def announce(self) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._listed >= LIST_EVERY:
                self._list(now)
            if not self._paths:
                return
            out = sender()
            failed = False
            for path in self._paths:
                try:
                    out.sendto(b"", path)
                except ConnectionRefusedError:  # nobody reads it: its process is gone
                    with contextlib.suppress(OSError):
                        if stat.S_ISSOCK(os.lstat(path).st_mode):  # (only a socket)
                            os.unlink(path)
                    failed = True
                except BlockingIOError:
                    pass  # its buffer is full of wake-ups already: it will claim
                except OSError:
                    failed = True  # (removed meanwhile, ...): the poll does the work
            if failed:
                self._list(now)

    def _list(self, now: float) -> None:
        self._listed = now
        if not private_folder(self.folder, make=False):
            self._paths = []  # none yet, or not one to trust: the poll does the work
            return
        try:
            with os.scandir(self.folder) as entries:
                self._paths = [e.path for e in entries if e.name.endswith(".sock")]
        except OSError:
            self._paths = []  # no folder: no process listens yet


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, if one is."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class Listener:
    """The receiving side: calls ``wake`` whenever a datagram comes. With ``loop``, on
    that event loop (the socket is one of the loop's readers: no thread, no hop from
    one to the loop); without, in a thread of its own."""

    def __init__(
        self,
        folder: Path,
        wake: Callable[[], None],
        *,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        """Raises ``OSError`` when it cannot listen here (the caller then polls)."""
        if not private_folder(folder, make=True):
            raise PermissionError(
                f"{folder} is not a folder of this user's alone (a link, another user's, "
                f"or one others may write to)"
            )
        self.path = str(folder / f"{os.getpid()}-{uuid.uuid4().hex[:12]}.sock")
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._socket.bind(self.path)
        except OSError:
            self._socket.close()
            raise
        self._wake = wake
        self._stop = threading.Event()
        self._loop = loop
        self._thread: threading.Thread | None = None
        if loop is not None:
            self._socket.setblocking(False)
            try:
                loop.add_reader(self._socket.fileno(), self._ready)
            except (NotImplementedError, RuntimeError):  # a loop without readers
                self._loop = None
        if self._loop is None:
            self._socket.settimeout(STOP_CHECK)
            self._thread = threading.Thread(target=self._run, name="errands-wake", daemon=True)
            self._thread.start()

    def _ready(self) -> None:
        """Datagrams came (the socket does not block now): read them all, wake once."""
        self._drain()
        if self._stop.is_set():
            return
        try:
            self._wake()
        except Exception:  # (a worker's loop closing meanwhile): its poll will do
            logger.debug("waking the worker for new jobs failed", exc_info=True)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    self._socket.recv(1)
                except TimeoutError:
                    continue
                except OSError as exc:
                    if not self._stop.is_set():
                        logger.warning(
                            "listening for new jobs at %s failed (%s); the worker polls",
                            self.path,
                            exc,
                        )
                    return
                self._socket.settimeout(0)
                try:
                    self._ready()
                finally:
                    self._socket.settimeout(STOP_CHECK)
        finally:
            self._release()

    def _drain(self) -> None:
        """Read the rest of a burst (the socket does not block): one wake-up does for all."""
        try:
            while True:
                self._socket.recv(1)
        except OSError:  # BlockingIOError: none left
            pass

    def _release(self) -> None:
        self._socket.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    def close(self, *, wait: bool = False) -> None:
        """Stop listening; returns at once (a thread ends within ``STOP_CHECK``, removing
        its socket), or with ``wait`` once it has."""
        loop = self._loop
        if loop is not None:
            if self._stop.is_set():
                return
            self._stop.set()
            if running_loop() is loop or loop.is_closed():
                self._unregister()
            else:  # (the store closing from another thread): the loop's readers are its own
                try:
                    loop.call_soon_threadsafe(self._unregister)
                except RuntimeError:  # closed meanwhile
                    self._unregister()
            return
        self._stop.set()
        # Woken now rather than at its timeout.
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as poke:
            poke.setblocking(False)
            poke.sendto(b"", self.path)
        if wait and self._thread is not None:
            self._thread.join(timeout=STOP_CHECK + 1)

    def _unregister(self) -> None:
        assert self._loop is not None
        if not self._loop.is_closed():
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(self._socket.fileno())
        self._release()
