"""Per-session polling shared by the explorer's pages that follow engine processes."""

from __future__ import annotations

import panel as pn
from panel.io.callbacks import PeriodicCallback


class SessionPolling:
    """Mixin for a page with a ``poll()`` method and a ``period`` (ms): polls in this session only.

    ``start()`` adds one periodic callback for the current browser session and removes it when
    the session is destroyed, so closed tabs leave no callbacks behind (and never touch the
    engine processes they were watching). While the page's tab is hidden (:meth:`shown`) it
    polls every :attr:`hidden_period` ms instead: the page still reaps its finished child
    processes, and nothing it draws is on screen.

    The callback runs in the background (Panel's ``background=True``): it does not raise and
    lower Panel's process-wide busy state on every tick, which with five sessions open cost the
    server ~10 ms of CPU per second per session with nothing to show for it (measured with
    cProfile, 2026-11-26).
    """

    _callback = None
    _shown = True
    #: Polling period (ms) while the page's tab is hidden.
    hidden_period = 5000

    def start(self, shown: bool = True) -> None:
        """Poll every ``period`` ms in this browser session (every :attr:`hidden_period` ms
        while ``shown`` is False); stop when the session ends."""
        if self._callback is None:
            self._shown = bool(shown)
            self._callback = PeriodicCallback(
                callback=self.poll, period=self._current_period(), background=True, log=False
            )
            self._callback.start()
            pn.state.on_session_destroyed(self._stop_polling)

    def shown(self, visible: bool) -> None:
        """The page's tab was shown (poll at once, then every ``period`` ms) or hidden (every
        :attr:`hidden_period` ms)."""
        visible = bool(visible)
        if visible == self._shown:
            return
        self._shown = visible
        if self._callback is not None:
            self._callback.period = self._current_period()
        if visible:
            self.poll()

    def _current_period(self) -> int:
        return int(self.period if self._shown else max(self.period, self.hidden_period))

    def _stop_polling(self, *_session_context) -> None:
        if self._callback is not None:
            self._callback.stop()
            self._callback = None
