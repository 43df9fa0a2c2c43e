"""Choice of torch device: CUDA automatically when a CUDA build and a GPU are present."""

from __future__ import annotations

import torch


def default_device(requested: str | None = None) -> torch.device:
    """Return the torch device to compute on.

    Parameters
    ----------
    requested : str or None
        ``"auto"`` or ``None`` picks ``cuda`` when ``torch.cuda.is_available()``, else ``cpu``;
        any other string (``"cpu"``, ``"cuda"``, ``"cuda:1"``) is used as given.

    Raises
    ------
    ValueError
        If ``cuda`` is requested but no CUDA device is available.
    """
    if requested in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(requested)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={requested!r} requested but no CUDA GPU is available; use 'cpu' or 'auto'"
        )
    return dev
