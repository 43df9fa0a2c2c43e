"""Browser dashboard (``panel serve explorer``): thin Panel + HoloViews views over engine state.

Pages: :mod:`explorer.fieldlab` (live maps and their statistics) and :mod:`explorer.training`
(launching, stopping and watching engine training runs). Nothing here trains or runs long
computations in the server process; runs are separate engine processes tailed through their
run directories (see :mod:`engine.runs`).
"""
