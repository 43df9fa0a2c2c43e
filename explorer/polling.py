"""Per-session polling shared by the explorer's pages that follow engine processes."""

from __future__ import annotations

import panel as pn


class SessionPolling:
    """Mixin for a page with a ``poll()`` method and a ``period`` (ms): polls in this session only.

    ``start()`` adds one periodic callback for the current browser session and removes it when
    the session is destroyed, so closed tabs leave no callbacks behind (and never touch the
    engine processes they were watching).
    """

    _callback = None

    def start(self) -> None:
        """Poll every ``period`` ms in this browser session; stop when the session ends."""
        if self._callback is None:
            self._callback = pn.state.add_periodic_callback(self.poll, period=self.period)
            pn.state.on_session_destroyed(self._stop_polling)

    def _stop_polling(self, *_session_context) -> None:
        if self._callback is not None:
            self._callback.stop()
            self._callback = None
