"""Jobs off the event loop, only ever the latest: :class:`LatestOnly`, the runner of every page
whose views follow a slider (field lab, sky of CMB, lensing, generate), and the worker pools
it runs in (:func:`executor`).

A served Panel session must not compute on the Tornado event loop, which carries every session's
messages; and a slider moved faster than the updates are computed must never queue stale ones.
:class:`LatestOnly` keeps at most one job of its owner running and one waiting (a newer request
replaces the waiting one), starts slow jobs only once the settings settle, and holds the next job
until the browser says it painted the last frame (flow control). Views that are not live (the
field lab's PDF and peak counts) run at idle priority: after every session's live updates.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from panel.io.document import hold
from tornado.ioloop import IOLoop

#: Requests with a settle time start at most MAX_SETTLE s after the first waiting one.
MAX_SETTLE = 0.5
#: Seconds a served page waits for the browser to say it painted a frame before it sends the
#: next one anyway (a hidden tab runs no animation frames and never says so).
ACK_TIMEOUT = 1.0
#: Seconds an idle-priority job waits at most for the live updates of every session of the
#: server to pause (then it starts anyway), and how often it looks again meanwhile.
IDLE_WAIT = 3.0
IDLE_POLL = 0.05
#: A live runner busier than this many seconds counts as idle: a session that ended while its
#: job ran (its completion never delivered) holds up the others' idle views no longer.
LIVE_STALE = 30.0


# ---------------------------------------------------------------------------------------------
# Updates off the event loop, only the latest
# ---------------------------------------------------------------------------------------------

#: Worker threads of the "updates" pool (field lab, lensing: the runners given no pool), shared
#: by all sessions of the server (each runner has at most one job in them at a time);
#: ``$EXPLORER_FIELDLAB_WORKERS`` overrides it.
WORKERS = int(
    os.environ.get("EXPLORER_FIELDLAB_WORKERS") or min(4, max(1, (os.cpu_count() or 2) // 2))
)
_executors: dict[str, ThreadPoolExecutor] = {}


def executor(name: str = "updates") -> ThreadPoolExecutor:
    """A process-wide pool of threads, made on first use: ``"updates"`` (:data:`WORKERS`
    threads) computes the maps and their main views; ``"settled"`` (one thread) the numbers
    of the views that follow once a session's updates pause, so that they never wait in line
    before, or hold up, another session's map."""
    if name not in _executors:
        threads = WORKERS if name == "updates" else 1
        _executors[name] = ThreadPoolExecutor(threads, thread_name_prefix=f"fieldlab-{name}")
    return _executors[name]


class LatestOnly:
    """Run jobs off the event loop, one at a time, always the latest one requested.

    In a served session (a Bokeh document is given) :meth:`request` asks the worker threads
    for a turn when no job of this owner runs or waits there; a job requested meanwhile
    replaces the pending one, and a worker takes the pending job only when it starts, so a
    stale job is dropped, never queued, even while the workers serve other sessions. When the
    running job ends, the next turn (if a job is pending) is asked at once and then the finished
    job's output is handed to ``deliver`` on the document's event loop (the worker hands it to
    the event loop with the thread-safe ``IOLoop.add_callback``, which then schedules it with
    the document, so that it runs under the document's lock; a worker never touches the
    document, whose event hold is not thread-safe): a slider moved
    faster than the updates are computed shows finished updates as they come and always ends
    on its last value, with no wait in between. Without a document (scripts, tests) the job
    runs at once and is delivered before :meth:`request` returns.

    A request with a ``settle`` time (slow updates) starts once no newer request came for that
    long, or :data:`MAX_SETTLE` s after the first waiting one: a burst of key presses or a drag
    then does not first compute a value it leaves at once.

    Flow control (:meth:`expect_ack`, :meth:`acknowledge`): after ``deliver`` sent a frame that
    the browser will acknowledge once painted, the next job starts only when that
    acknowledgement came (or :data:`ACK_TIMEOUT` s passed). The server then never sends frames
    faster than the page can paint them: a drag in five tabs on two cores had queued up to a
    second of stale frames in the browsers (every key press of a drag was drawn, each ~0.1 s of
    the renderer's CPU), and its last value waited behind them.

    Idle priority (``idle=True``, for views that need not follow every step): a job starts only
    while no live runner of the process (any other served runner, of any session) has a job
    running or a frame sent and not yet painted, or :data:`IDLE_WAIT` s after the first waiting
    request, whichever comes first. One session alone sees no difference (its own live update
    is painted before its idle views are asked for); five sessions stepping at once on two
    cores no longer spend a third of the CPU (server and renderers) repainting secondary views
    between the presses of the others (``benchmarks/browser.py``): those views then lag by at
    most :data:`IDLE_WAIT` s.

    Parameters
    ----------
    deliver : callable
        ``deliver(output, error, latest)`` with the job's return value (None if it raised), the
        exception it raised (or None) and whether no newer job is pending.
    doc : bokeh.document.Document, optional
    pool : concurrent.futures.Executor, optional
        Where jobs run (default :func:`executor`).
    loop : tornado.ioloop.IOLoop, optional
        The document's event loop (default: the current one when the first job starts).
    idle : bool
        Idle priority (above); default False: a live runner.
    """

    #: The live runners of served documents in this process (weakly: a closed session's go).
    _live: weakref.WeakSet = weakref.WeakSet()

    def __init__(self, deliver: Callable, doc=None, pool=None, loop=None, idle: bool = False):
        self.deliver, self.doc, self.pool, self.loop = deliver, doc, pool, loop
        self.idle = idle
        self._busy_since = 0.0  # when the current job started or frame was sent
        self._idle_since: float | None = None  # first idle-priority request waiting
        self._polling = False
        if doc is not None and not idle:
            LatestOnly._live.add(self)
        self._pending: Callable | None = None
        self._lock = threading.Lock()  # guards _pending (a worker takes it when it starts)
        self._requests = 0  # number of requests so far (tags the settle timers)
        self._waiting_since: float | None = None
        self._awaiting: int | None = None  # frame sent and not yet acknowledged as painted
        self.running = False

    @property
    def busy(self) -> bool:
        """True while a job runs or waits."""
        return self.running or self._pending is not None

    @property
    def live_busy(self) -> bool:
        """True while a job of this runner runs (for at most :data:`LIVE_STALE` s) or its frame
        waits to be painted (at most :data:`ACK_TIMEOUT` s, after which the next frame goes
        anyway): a closed session's runner, whose timers are gone, holds no one up for long."""
        age = time.monotonic() - self._busy_since
        if self.running:
            return age < LIVE_STALE
        return self._awaiting is not None and age < ACK_TIMEOUT

    @classmethod
    def live_work(cls) -> bool:
        """True while any live runner of the process is :attr:`live_busy`."""
        return any(runner.live_busy for runner in list(cls._live))

    def request(self, job: Callable[[], object], settle: float = 0.0) -> None:
        """Compute ``job()`` (a snapshot of what to compute) as soon as possible.

        ``settle``: seconds without a newer request before the job starts (0: at once).
        """
        if self.doc is None:
            out, err = capture(job)
            self.deliver(out, err, True)
            return
        with self._lock:
            self._pending = job
        self._requests += 1
        if self.running or self._awaiting is not None:
            return
        now = time.monotonic()
        waiting = self._waiting_since if self._waiting_since is not None else now
        if settle <= 0 or now - waiting >= MAX_SETTLE:
            self._go()
            return
        self._waiting_since = waiting
        self.doc.add_timeout_callback(partial(self._settled, self._requests), int(1e3 * settle))

    def _settled(self, tag: int) -> None:  # on the event loop
        if tag == self._requests and not self.running and self._pending is not None:
            self._go()

    def _go(self) -> None:  # on the event loop: start now, or (idle priority) once it is idle
        if not self.idle or self.doc is None:
            self._start()
            return
        now = time.monotonic()
        if self._idle_since is None:
            self._idle_since = now
        if now - self._idle_since >= IDLE_WAIT or not LatestOnly.live_work():
            self._idle_since = None
            self._start()
        elif not self._polling:
            self._polling = True
            self.doc.add_timeout_callback(self._poll, int(1e3 * IDLE_POLL))

    def _poll(self) -> None:  # on the event loop
        self._polling = False
        if not self.running and self._awaiting is None and self._pending is not None:
            self._go()

    def expect_ack(self, frame: int) -> None:
        """Hold the next job until :meth:`acknowledge` receives ``frame`` (or a later one), at
        most :data:`ACK_TIMEOUT` s (served documents only; call from ``deliver``)."""
        if self.doc is None:
            return
        self._awaiting = int(frame)
        self._busy_since = time.monotonic()
        self.doc.add_timeout_callback(partial(self.acknowledge, frame), int(1e3 * ACK_TIMEOUT))

    def acknowledge(self, frame: int) -> None:
        """The browser painted ``frame`` (on the event loop): the pending job, if any, starts."""
        if self._awaiting is None or int(frame) < self._awaiting:
            return  # an older frame, or a timeout of one already acknowledged
        self._awaiting = None
        if not self.running and self._pending is not None:
            self._go()

    def _start(self) -> None:  # on the event loop
        if self.loop is None:
            self.loop = IOLoop.current()
        self._waiting_since = None
        self._busy_since = time.monotonic()
        self.running = True  # a turn asked: the job runs or waits in the pool
        (self.pool or executor()).submit(self._work)

    def _work(self) -> None:  # in a worker thread: the latest job, taken as the turn starts
        with self._lock:
            job, self._pending = self._pending, None
        out, err = capture(job) if job is not None else (None, None)
        self.loop.add_callback(self._finished, out, err)  # thread-safe

    def _finished(self, out, err) -> None:  # on the event loop: run _done with the doc's lock
        with contextlib.suppress(Exception):  # the session may have ended meanwhile
            self.doc.add_next_tick_callback(partial(self._done, out, err))

    def _done(self, out, err) -> None:  # on the event loop
        self.running = False
        with hold(self.doc):  # all changes of one update in one message to the browser
            self.deliver(out, err, self._pending is None)
        if self._pending is not None and self._awaiting is None:
            self._go()  # the next update computes while this one is sent


def capture(job: Callable[[], object]) -> tuple:
    """``(job(), None)``, or ``(None, exception)`` when ``job`` raised: an outcome to hand to
    a ``deliver`` on the event loop, which shows or re-raises the error."""
    try:
        return job(), None
    except Exception as exc:  # noqa: BLE001 - handed to deliver, which shows or re-raises it
        return None, exc
