"""The one training loop, for every task (:mod:`engine.tasks`).

:class:`Trainer` owns what every task needs: the device, bfloat16 autocast (AMP), TF32,
channels_last, EMA of the weights, freezing and discriminative learning rates, gradient clipping,
the learning-rate schedule (:func:`engine.train.schedule.lr_at`), early stopping on the task's
selection metric, checkpoints (:mod:`engine.train.checkpoint`), resume, DDP
(:class:`engine.train.distributed.Distributed`), metrics.jsonl, TensorBoard and a progress bar.
The task owns its networks, optimiser steps, data and validation metrics.

Reproducibility: networks are initialised from ``derive_seed(seed, STREAM_INIT)``; the task
makes the batch of each step from the run's seed and the step alone, so a run stopped after
any step and resumed from its ``last.pt`` reaches bit-identical weights to an uninterrupted run
on the same device with the same number of threads and processes. With W DDP processes, each
trains on its rows of the same global batch and gradients are averaged, so the run follows the
one-process run up to float summation order (tests/test_ddp.py). Only rank 0 validates, writes
the run directory and shows a progress bar; a stop request on any rank is all-reduced every step.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

import engine
from engine.data.sources import STREAM_INIT, derive_seed
from engine.params import ConfigError, to_dict
from engine.runs import RunDir
from engine.tasks import get_task
from engine.train.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from engine.train.distributed import Distributed
from engine.train.finetune import EMA, frozen_parameters, model_stages, param_groups
from engine.train.schedule import epoch_of, lr_at
from engine.train.settings import TENSORBOARD_MISSING, configure_tf32


class _Stepper:
    """The loop's side of :class:`engine.tasks.base.Stepper`: one optimiser update."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.autocast = trainer.autocast
        self.grad_norms: dict[str, torch.Tensor] = {}

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.trainer.channels_last else x

    def step(self, name: str, loss: torch.Tensor) -> torch.Tensor:
        t = self.trainer
        opt = t.optimizers[name]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = t.params.grad_clip if t.params.grad_clip > 0 else math.inf
        trainable = [q for q in t.models[name].parameters() if q.requires_grad]
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, max_norm)
        opt.step()
        self.grad_norms[name] = grad_norm.detach()
        return grad_norm.detach()


class Trainer:
    """The training loop of one run (module docstring).

    Parameters
    ----------
    params : engine.train.settings.TrainParams
        Checked settings (their ``task_name`` picks the task).
    run : RunDir
        Where metrics, status and checkpoints go (main process only).
    device : torch.device
    progress : bool, optional
        tqdm progress bar; default when stderr is a terminal (never on ranks other than 0).
    dist : Distributed, optional
        The processes of the run (default: this one alone).

    Raises
    ------
    ConfigError
        Bad map settings or dataset, a ``freeze`` item matching nothing, no trainable parameter
        in the first epoch, or a batch size the processes cannot share.
    """

    def __init__(self, params, run: RunDir, device, progress=None, dist=None):
        self.params = params
        self.run = run
        self.device = torch.device(device)
        self.dist = dist or Distributed()
        self.is_main = self.dist.is_main
        self.rows = self.dist.rows(params.batch_size)
        self.progress = self.is_main and (sys.stderr.isatty() if progress is None else progress)
        cuda = self.device.type == "cuda"
        if cuda:
            configure_tf32(params.tf32)
        self.channels_last = params.channels_last and cuda
        self.task = get_task(getattr(params, "task_name", "regression"))(params, self.device)
        self.specs = self.task.network_specs()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(params.seed, STREAM_INIT))
            built = self.task.build_networks()
        self.models: dict[str, nn.Module] = {}
        for name, model in built.items():
            model = model.to(self.device)
            if self.channels_last:
                model = model.to(memory_format=torch.channels_last)
            self.models[name] = model
        self.primary = next(iter(self.models))
        averaged = self.task.ema_networks or tuple(self.models)
        self.emas = (
            {n: EMA(self.models[n], params.ema_decay) for n in averaged}
            if params.ema_decay > 0
            else {}
        )
        self.optimizers = {name: self._optimizer(name, m) for name, m in self.models.items()}
        main = self.models[self.primary]
        self.frozen = frozen_parameters(main, list(params.freeze))
        self._stage_of = {n: s for s, names in model_stages(main) for n in names}
        self._release_order = [
            s for s, names in reversed(model_stages(main)) if self.frozen.intersection(names)
        ]
        self._released: int | None = None
        self.nets: dict[str, nn.Module] = dict(self.models)
        self.set_epoch(0)
        if not any(p.requires_grad for p in main.parameters()):
            raise ConfigError(
                f"freeze={list(params.freeze)} leaves no trainable parameter in the first epoch"
            )
        self.step = 0
        self.best = math.inf if self.task.selection[1] == "min" else -math.inf
        self.epochs_since_best = 0
        use_amp = params.amp and cuda and torch.cuda.is_bf16_supported()
        self.autocast = torch.autocast(
            device_type=self.device.type, dtype=torch.bfloat16, enabled=use_amp
        )
        self.tensorboard = None

    def _optimizer(self, name: str, model: nn.Module) -> torch.optim.Optimizer:
        """AdamW of network ``name``: the loop's lr and weight decay, changed by the task's
        :meth:`engine.tasks.base.Task.optimizer_options`; one group per stage (lr_decay on
        the primary network)."""
        params = self.params
        options = dict(self.task.optimizer_options(name))
        scale = float(options.pop("lr_scale", 1.0))
        groups = param_groups(model, params.lr_decay if name == self.primary else 1.0)
        for group in groups:
            group["lr_scale"] *= scale
        options.setdefault("weight_decay", params.weight_decay)
        return torch.optim.AdamW(groups, lr=params.lr * scale, **options)

    # -- compatibility views of the primary network -------------------------------------------

    @property
    def model(self) -> nn.Module:
        """The primary network (optimised weights)."""
        return self.models[self.primary]

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The primary network's optimiser."""
        return self.optimizers[self.primary]

    @property
    def eval_models(self) -> dict[str, nn.Module]:
        """The weights validated and checkpointed as ``state``: the EMA's when enabled."""
        return {n: (self.emas[n].module if n in self.emas else m) for n, m in self.models.items()}

    @property
    def eval_model(self) -> nn.Module:
        """The primary network's validated weights (EMA when enabled)."""
        return self.eval_models[self.primary]

    @property
    def best_val(self) -> float:
        """Best value so far of the task's selection metric."""
        return self.best

    # -- freezing and DDP ----------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Make the primary network's parameters trainable that should be in (0-based)
        ``epoch``, and (re)wrap the networks for DDP when that set changed (DDP only
        synchronises trainable parameters)."""
        k = self.params.unfreeze_every
        released = min(epoch // k, len(self._release_order)) if k > 0 else 0
        if released == self._released:
            return
        self._released = released
        free = set(self._release_order[:released])
        for name, p in self.models[self.primary].named_parameters():
            p.requires_grad_(name not in self.frozen or self._stage_of[name] in free)
        if self.dist.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            for name, model in self.models.items():
                self.nets[name] = model  # drop the old wrapper (and its hooks) first
                self.nets[name] = DistributedDataParallel(model, device_ids=ids)

    # -- checkpoints ---------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The self-describing checkpoint dict (:mod:`engine.train.checkpoint`)."""
        networks = {}
        for name, model in self.models.items():
            label, kwargs = self.specs.get(name, (type(model).__name__, {}))
            entry = {
                "name": label,
                "kwargs": dict(kwargs),
                "state": self.eval_models[name].state_dict(),
            }
            if name in self.emas:
                entry["raw_state"] = model.state_dict()
            networks[name] = entry
        metric, mode = self.task.selection
        return {
            "format": FORMAT,
            "task": self.task.name,
            "task_state": self.task.state(),
            "networks": networks,
            "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
            "step": self.step,
            "epoch": epoch_of(self.step, self.params.steps_per_epoch),
            "best": {"metric": metric, "mode": mode, "value": float(self.best)},
            "epochs_since_best": self.epochs_since_best,
            "config": to_dict(self.params),
            "map_settings": self.task.map_config(),
            "engine_version": engine.__version__,
        }

    def save(self, name: str = "last.pt") -> Path:
        """Write the checkpoint to ``run.checkpoint_dir / name`` atomically."""
        path = self.run.checkpoint_dir / name
        save_checkpoint(self.state(), path)
        return path

    def _check_networks(self, ckpt: Mapping[str, Any], what: str, names) -> None:
        if ckpt.get("task") != self.task.name:
            raise ConfigError(
                f"{what}: the checkpoint is of task {ckpt.get('task')!r}, not {self.task.name!r}"
            )
        for name in names:
            entry = ckpt["networks"].get(name, {})
            want = self.specs.get(name)
            have = (entry.get("name"), entry.get("kwargs"))
            if want is not None and have != (want[0], dict(want[1])):
                raise ConfigError(
                    f"{what}: the checkpoint holds model {have[0]!r} {have[1]}, the settings ask "
                    f"for {want[0]!r} {dict(want[1])}"
                )

    def load_weights(self, path: str | Path) -> None:
        """Fine-tuning start: the primary network's weights of a checkpoint, not its optimiser.

        Raises
        ------
        ConfigError
            Missing/unreadable checkpoint, or one of another task or model than the settings
            ask for.
        """
        ckpt = load_checkpoint(path, map_location=self.device)
        what = f"init_from={str(path)!r}"
        self._check_networks(ckpt, what, [self.primary])
        state = ckpt["networks"][self.primary]["state"]
        self.model.load_state_dict(state)
        if self.primary in self.emas:
            self.emas[self.primary].module.load_state_dict(state)

    def restore(self, path: str | Path | None = None) -> None:
        """Load networks, EMAs, optimisers and loop state from a checkpoint (default
        ``last.pt``).

        Raises
        ------
        ConfigError
            Missing/unreadable checkpoint, or one of another task, model or optimiser layout
            than the settings ask for.
        """
        ckpt = load_checkpoint(path or self.run.checkpoint_dir / "last.pt", self.device)
        if ckpt.get("inference_only"):
            raise ConfigError(
                "cannot resume: the checkpoint is for inference only (a shipped model, without "
                "optimiser state); start a new run with --set init_from=CHECKPOINT to fine-tune"
            )
        self._check_networks(ckpt, "cannot resume", self.models)
        for name, model in self.models.items():
            entry = ckpt["networks"][name]
            model.load_state_dict(entry.get("raw_state", entry["state"]))
            if name in self.emas:
                self.emas[name].module.load_state_dict(entry["state"])
            try:
                self.optimizers[name].load_state_dict(ckpt["optimizers"][name])
            except (KeyError, ValueError) as exc:
                raise ConfigError(
                    f"cannot resume: the checkpoint's optimiser state does not fit ({exc})"
                ) from None
        self.step = int(ckpt["step"])
        self.best = float(ckpt["best"]["value"])
        self.epochs_since_best = int(ckpt.get("epochs_since_best", 0))

    # -- logging -------------------------------------------------------------------------------

    def log(self, step: int, epoch: int, split: str, values: Mapping[str, float]) -> None:
        """Append metrics to ``metrics.jsonl`` (and TensorBoard scalars ``split/name``); main
        process only."""
        if not self.is_main:
            return
        self.run.log_metrics(step, epoch, split, values)
        if self.tensorboard is not None:
            for name, value in values.items():
                self.tensorboard.add_scalar(f"{split}/{name}", float(value), step)
            self.tensorboard.flush()

    def _open_tensorboard(self) -> None:
        if not (self.params.tensorboard and self.is_main) or self.tensorboard is not None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(TENSORBOARD_MISSING) from None
        self.tensorboard = SummaryWriter(log_dir=str(self.run.path / "tensorboard"))

    def _close_tensorboard(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None

    # -- loop ----------------------------------------------------------------------------------

    def train_step(self) -> tuple[dict[str, torch.Tensor], float]:
        """One step of the task on this process's rows of the current batch; advances
        :attr:`step`. Returns the task's 0-d tensors (not synchronised) and the head's lr."""
        p = self.params
        self.set_epoch(self.step // p.steps_per_epoch)
        lr = lr_at(
            self.step,
            p.lr,
            p.warmup_steps,
            p.total_steps,
            p.final_lr_fraction,
            p.restart_period,
            p.restart_mult,
        )
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = lr * group["lr_scale"]
        for net in self.nets.values():
            net.train()
        values = self.task.training_step(self.step, self.rows, self.nets, _Stepper(self))
        for name, ema in self.emas.items():
            ema.update(self.models[name], self.step)
        self.step += 1
        return values, lr

    def _log_window(self, sums, n_window: int, t_window: float, lr: float, epoch: int) -> float:
        """Log the means of the task's values over the window (and processes); returns the
        mean loss. Raises FloatingPointError for a non-finite loss."""
        p = self.params
        means = {k: float(self.dist.mean(v)) / n_window for k, v in sums.items()}
        loss = means.get("loss", 0.0)
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"training loss is {loss} at step {self.step}; "
                f"try a smaller lr (now {p.lr:g}) or grad_clip"
            )
        elapsed = time.perf_counter() - t_window
        rate = n_window * p.batch_size / max(elapsed, 1e-9)
        values = {"loss": loss, "lr": lr}
        values.update({k: v for k, v in means.items() if k != "loss"})
        values[f"{self.task.sample_unit}_per_s"] = rate
        self.log(self.step, epoch, "train", values)
        if self.is_main:
            self.run.write_status(step=self.step, epoch=epoch)
        return loss

    def fit(self, should_stop: Callable[[], bool] = lambda: False) -> str:
        """Train from :attr:`step` to ``params.total_steps``; returns the final state.

        Logs split ``train`` (the task's values, e.g. ``loss`` and ``grad_norm``, averaged
        over the steps since the last log and the processes; ``lr``; ``<unit>_per_s``) every
        ``log_every`` steps and at epoch ends, split ``val`` (the task's validation metrics) at
        epoch ends, updates ``status.json`` and writes ``last.pt`` (and ``best.pt`` when the
        selection metric improves) at epoch ends.

        Parameters
        ----------
        should_stop : callable
            Polled after every step (any rank's True stops all of them): the loop saves
            ``last.pt`` and returns ``"stopped"``.

        Returns
        -------
        str
            ``"completed"`` (all steps done, or early stopping) or ``"stopped"``.

        Raises
        ------
        FloatingPointError
            The training loss became NaN or infinite.
        ConfigError
            ``tensorboard`` without its package.
        """
        from tqdm.auto import tqdm

        p, dist = self.params, self.dist
        total, spe = p.total_steps, p.steps_per_epoch
        val_set = self.task.validation_data() if self.is_main else None
        sums: dict[str, torch.Tensor] = {}
        n_window, t_window = 0, time.perf_counter()
        self._open_tensorboard()
        bar = tqdm(
            total=total, initial=self.step, disable=not self.progress, desc=self.run.id, unit="step"
        )
        try:
            while self.step < total:
                values, lr = self.train_step()
                for k, v in values.items():
                    sums[k] = sums[k] + v.float() if k in sums else v.detach().float().clone()
                n_window += 1
                epoch = epoch_of(self.step, spe)
                end_of_epoch = self.step % spe == 0
                stop = dist.any(should_stop())
                bar.update(1)
                if self.step % p.log_every == 0 or end_of_epoch or stop or self.step == total:
                    loss = self._log_window(sums, n_window, t_window, lr, epoch)
                    bar.set_postfix(loss=f"{loss:.4f}")
                    sums = {}
                    n_window, t_window = 0, time.perf_counter()
                if end_of_epoch:
                    if self.end_epoch(epoch, val_set):
                        return "completed"
                elif stop and self.is_main:
                    self.save("last.pt")
                if stop and self.step < total:
                    return "stopped"
        finally:
            bar.close()
            self._close_tensorboard()
        return "completed"

    def end_epoch(self, epoch: int, val_set) -> bool:
        """Validate, log, checkpoint (rank 0); returns True on every rank when early stopping
        ends the run."""
        done = False
        if self.is_main:
            metrics = self.task.validate(self.eval_models, val_set, self.autocast)
            self.log(self.step, epoch, "val", metrics)
            metric = self.task.selection[0]
            if metric not in metrics:
                raise KeyError(f"task {self.task.name!r} did not report its metric {metric!r}")
            improved = self.task.better(metrics[metric], self.best)
            if improved:
                self.best = metrics[metric]
                self.epochs_since_best = 0
            else:
                self.epochs_since_best += 1
            self.save("last.pt")
            if improved:
                self.save("best.pt")
            best = self.best if math.isfinite(self.best) else None
            self.run.write_status(step=self.step, epoch=epoch, best_val=best)
            patience = self.params.patience
            done = bool(patience) and self.epochs_since_best >= patience
        return self.dist.broadcast(done)
