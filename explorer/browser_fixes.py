"""Fixes applied in the browser page of a served explorer session.

:data:`SAME_CSS_JS` — Bokeh 3.9's ``InlineStyleSheet._update`` assigns ``textContent`` on every
paint of every renderer (``RendererView.update_position`` rewrites each renderer's position
sheet), even when the CSS text is unchanged. Chromium re-parses the sheet and invalidates the
styles of the plot's shadow root, and the next visual that reads a colour through
``getComputedStyle(...).getPropertyValue`` (every line, fill and text visual, every paint) forces
a synchronous style recalculation. In the field lab's Chromium trace (``python -m
benchmarks.browser --kinds grf --sessions 1 --trace DIR``) that was 236 ms of
``getPropertyValue`` in 16 steps; with the fix 93 ms, and the renderer's main thread was busy
15 % less (3.67 → 3.12 s). The fix skips the assignment when the text is the same, which cannot
change what is drawn.

:func:`install` attaches it to a Bokeh document (``DocumentReady`` → ``CustomJS``).
"""

from __future__ import annotations

from bokeh.document import Document
from bokeh.models import CustomJS

#: Page JavaScript: an inline style sheet keeps its text node when the text is unchanged.
SAME_CSS_JS = """
const dom = Bokeh.require("core/dom")
const sheet = dom.InlineStyleSheet.prototype
if (!sheet.__same_css_fix) {
  const update = sheet._update
  sheet._update = function (css) {
    if (this.el.textContent !== css) update.call(this, css)
  }
  sheet.__same_css_fix = true
}
"""


def install(doc: Document) -> None:
    """Run :data:`SAME_CSS_JS` in the page of ``doc`` when the document is ready."""
    doc.js_on_event("document_ready", CustomJS(code=SAME_CSS_JS))
