"""Browser dashboard (``panel serve explorer``): thin Panel + HoloViews views over engine state.

Pages: :mod:`explorer.fieldlab` (live maps of every flat kind and their statistics against
theory), :mod:`explorer.sky` (HEALPix skies in Mollweide projection, their C_ℓ, patches cut by
clicking) and :mod:`explorer.training` (launching, stopping and watching engine training runs);
:mod:`explorer.data` finds the real data. Nothing here trains or runs long
computations in the server process; runs are separate engine processes tailed through their
run directories (see :mod:`engine.runs`).
"""
