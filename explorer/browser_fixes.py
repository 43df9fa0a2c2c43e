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

:data:`NO_CSS_VISUALS_JS` — every line, fill, text and hatch property of every Bokeh visual is
first looked up as a CSS custom property of its renderer's element (``--bk-<prefix>-<name>``,
``VisualProperties._get_css_value``: ``getComputedStyle(el).getPropertyValue``), on every paint,
so that style sheets can override a figure's colours. Nothing in the explorer, Panel or Bokeh
sets those properties (none in their style sheets), so the lookup always returns "" and the
value comes from the model; but it forces a style recalculation whenever the page changed since
the last one: ~3 ms of ``getPropertyValue`` per field-lab step after the fix above (Chromium CPU
profile, ``--trace-js``), under the axes' tick-label extents and the legend. This fix returns ""
without the lookup when, at the page's first paint, none of its style sheets (the document's and
every shadow root's) sets such a ``--bk-`` property; a page that does keeps the lookup. A style
sheet setting one that is added later is not seen: the explorer adds none.

:func:`install` attaches both to a Bokeh document (``DocumentReady`` → ``CustomJS``).
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


#: Page JavaScript: visuals skip the CSS custom-property lookup while no style sheet of the page
#: mentions a ``--bk-`` property of a visual (line, fill, text, hatch).
NO_CSS_VISUALS_JS = r"""
const visual = Bokeh.require("core/visuals/visual")
const proto = visual.VisualProperties.prototype
if (!proto.__no_css_visuals_fix) {
  const lookup = proto._get_css_value
  const styled = () => {
    const pattern = /--bk-[a-z0-9-]*(line|fill|text|hatch)-[a-z-]+\s*:/
    const texts = []
    for (const root of [document, ...Array.from(document.querySelectorAll("*"))
                         .map((el) => el.shadowRoot).filter((r) => r != null)]) {
      for (const sheet of root.styleSheets || []) {
        try { for (const rule of sheet.cssRules) texts.push(rule.cssText) } catch (e) {}
      }
      for (const sheet of root.adoptedStyleSheets || []) {
        try { for (const rule of sheet.cssRules) texts.push(rule.cssText) } catch (e) {}
      }
    }
    return texts.some((t) => pattern.test(t))
  }
  let uses_css = null
  proto._get_css_value = function (name) {
    if (uses_css === null) uses_css = styled()
    return uses_css ? lookup.call(this, name) : ""
  }
  proto.__no_css_visuals_fix = true
}
"""


def install(doc: Document) -> None:
    """Run :data:`SAME_CSS_JS` and :data:`NO_CSS_VISUALS_JS` in the page of ``doc`` when the
    document is ready."""
    for code in (SAME_CSS_JS, NO_CSS_VISUALS_JS):  # apart: one failing leaves the other
        doc.js_on_event("document_ready", CustomJS(code=code))
