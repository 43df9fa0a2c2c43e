"""The one task-agnostic training loop and what it needs.

* :mod:`engine.train.settings` — :class:`LoopParams` and the composed :class:`TrainParams`
  (loop + model + task + data settings), presets, device and thread set-up.
* :mod:`engine.train.loop` — :class:`Trainer`: device, AMP/TF32/channels_last, EMA, clipping,
  schedule, early stopping, checkpoints, resume, DDP, metrics.jsonl, TensorBoard, progress bar.
* :mod:`engine.train.checkpoint` — save/load (``weights_only=True``), run dir → best.pt,
  rebuild networks, upgrade of format-1 checkpoints.
* :mod:`engine.train.schedule` — pure learning-rate schedule (warm-up, cosine, SGDR).
* :mod:`engine.train.finetune` — stages, freezing, discriminative learning rates, EMA.
* :mod:`engine.train.distributed` — the processes of a torchrun launch.
* :mod:`engine.train.process` — one engine process's run: run directory, status, signals.
"""
