"""The processes of one run: a ``torchrun`` launch (DDP) or one process alone."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import torch

from engine.params import ConfigError


class Distributed:
    """The processes of one run: a ``torchrun`` launch (``WORLD_SIZE > 1``) or one process.

    Used as a context manager: entering initialises the default process group when
    ``world_size > 1`` (backend gloo for CPU tensors, plus NCCL for CUDA tensors when CUDA is
    available; rendezvous from torchrun's environment), leaving destroys it. With one process
    every method is a cheap no-op.

    Parameters
    ----------
    rank, world_size, local_rank : int
        As torchrun's ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``.
    """

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0):
        self.rank, self.world_size, self.local_rank = int(rank), int(world_size), int(local_rank)
        self._owner = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Distributed:
        """From torchrun's environment variables (one process when they are absent)."""
        env = os.environ if environ is None else environ
        return cls(
            int(env.get("RANK") or 0),
            int(env.get("WORLD_SIZE") or 1),
            int(env.get("LOCAL_RANK") or 0),
        )

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that validates and writes the run directory."""
        return self.rank == 0

    def __enter__(self) -> Distributed:
        import torch.distributed as tdist

        if self.world_size > 1 and not tdist.is_initialized():
            backend = "gloo"
            if torch.cuda.is_available():
                torch.cuda.set_device(self.local_rank)
                backend = "cpu:gloo,cuda:nccl"
            tdist.init_process_group(backend=backend)
            self._owner = True
        return self

    def __exit__(self, *exc) -> bool:
        import torch.distributed as tdist

        if self._owner and tdist.is_initialized():
            tdist.destroy_process_group()
        self._owner = False
        return False

    def device(self, device: torch.device) -> torch.device:
        """This process's device: ``cuda:LOCAL_RANK`` for CUDA with several processes."""
        device = torch.device(device)
        if device.type == "cuda" and self.world_size > 1:
            return torch.device("cuda", self.local_rank)
        return device

    def rows(self, batch_size: int) -> tuple[int, int]:
        """This process's rows ``[start, stop)`` of a global batch.

        Raises
        ------
        ConfigError
            ``batch_size`` is not a multiple of the number of processes.
        """
        if batch_size % self.world_size:
            raise ConfigError(
                f"batch_size={batch_size} must be a multiple of the number of processes "
                f"({self.world_size})"
            )
        per = batch_size // self.world_size
        return self.rank * per, (self.rank + 1) * per

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is True on any rank (all-reduce MAX; a collective)."""
        if self.world_size == 1:
            return bool(flag)
        import torch.distributed as tdist

        t = torch.tensor([1.0 if flag else 0.0])
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """Mean of a tensor over the ranks (all-reduce; a collective); ``value`` unchanged."""
        if self.world_size == 1:
            return value
        import torch.distributed as tdist

        t = value.detach().clone()
        tdist.all_reduce(t)
        return t / self.world_size

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (picklable; a collective)."""
        if self.world_size == 1:
            return obj
        import torch.distributed as tdist

        box = [obj]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on rank 0 only and return its result on every rank.

        Raises
        ------
        ConfigError
            On every rank, when ``fn`` raised one on rank 0 (same message).
        """
        if self.world_size == 1:
            return fn(*args)
        result = ("ok", None)
        if self.is_main:
            try:
                result = ("ok", fn(*args))
            except ConfigError as exc:
                result = ("error", str(exc))
        status, value = self.broadcast(result)
        if status == "error":
            raise ConfigError(value)
        return value
