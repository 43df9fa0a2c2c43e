"""Bokeh server lifecycle hooks of the explorer directory app.

``on_server_loaded`` makes the repository importable for the whole server process and, in a
background thread, imports the explorer (torch, pyccl, HoloViews: seconds) and builds the theory
tables (~2 s of pyccl), so the server answers at once and the first page waits less.
"""

import sys
import threading
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)


def _warm() -> None:
    from explorer.fieldlab_kinds import warm

    warm()


def on_server_loaded(server_context):
    """Put the repository root on ``sys.path`` and warm the explorer in a background thread."""
    if _ROOT not in sys.path:
        sys.path.insert(0, _ROOT)
    threading.Thread(target=_warm, name="explorer-warm", daemon=True).start()
