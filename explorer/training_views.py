"""Views of the open run on the Training page: its label in the run list, its status line,
its settings table and its evaluation (:class:`RunEvaluation`: the regression report of
:class:`explorer.report.EvaluationPanel`, or an emulator report). Plain functions of a run
directory; :mod:`explorer.training` places them.
"""

from __future__ import annotations

import time
from pathlib import Path

import param

from engine.runs import RunDir, list_runs
from explorer.generate_views import emulator_report_view, emulator_summary, is_emulator_report
from explorer.report import EvaluationPanel
from explorer.training_form import REGRESSION, setting_applies, task_controls

#: Colours of the run states in the status line.
STATE_COLORS = {
    "queued": "#6c757d",
    "running": "#0d6efd",
    "completed": "#198754",
    "failed": "#dc3545",
    "stopped": "#fd7e14",
    "died": "#6f42c1",  # queued/running on disk, but its process is gone (engine.runs)
}


def run_label(run: RunDir, example: bool = False) -> str:
    """One-line label of a run for the runs list: id, state and progress.

    An example run reads ``example: <name> — <state>``.
    """
    status = run.status() or {}
    state = status.get("state", "?")
    step, total = status.get("step"), status.get("total_steps")
    progress = f" {step}/{total}" if step is not None and total else ""
    return f"{'example: ' if example else ''}{run.id} — {state}{progress}"


def list_examples(root: str | Path | None) -> list[RunDir]:
    """The example run directories under ``root`` (None or missing: none), by name."""
    return sorted(list_runs(root), key=lambda r: r.id) if root else []


def status_markdown(
    run: RunDir | None,
    status: dict | None,
    maps_per_s: float | None = None,
    example: bool = False,
) -> str:
    """Markdown status line of a run: state, step/total, epoch, best loss, throughput (maps/s),
    last update, error; ``example`` marks a read-only example run."""
    if run is None:
        return "No run open. Press **Train** or pick a run from the list."
    name = f"example **{run.id}** (read-only)" if example else f"**{run.id}**"
    if not status:
        return f"{name} — no status yet"
    state = status.get("state", "?")
    color = STATE_COLORS.get(state, "#6c757d")
    parts = [
        name,
        f"<span style='color:white;background:{color};padding:1px 8px;border-radius:8px'>"
        f"{state}</span>",
    ]
    if status.get("step") is not None:
        total = status.get("total_steps")
        parts.append(f"step {status['step']}" + (f"/{total}" if total else ""))
    if status.get("epoch") is not None:
        parts.append(f"epoch {status['epoch']}")
    if status.get("best_val") is not None:
        parts.append(f"best val loss {status['best_val']:.4g}")
    if maps_per_s:
        parts.append(f"{maps_per_s:,.0f} maps/s")
    if status.get("updated"):
        parts.append(f"updated {time.strftime('%H:%M:%S', time.localtime(status['updated']))}")
    text = " · ".join(parts)
    if status.get("error"):
        text += f"\n\n**Error:** `{status['error']}`"
    return text


def config_markdown(run: RunDir | None) -> str:
    """Markdown table of the main settings of a run, from its config.json."""
    config = (run.config() if run is not None else None) or {}
    settings = config.get("settings") or {}
    if not settings:
        return ""
    task = str(config.get("task") or settings.get("task") or REGRESSION)
    head = f"preset `{config.get('preset')}` · device `{config.get('device', '?')}`"
    if task != REGRESSION:
        head = f"task `{task}` · " + head
    lines = [head, "", "| setting | value |", "|:--|--:|"]
    kind = settings.get("kind", "")
    lines += [
        f"| {n} | {settings[n]} |"
        for n in task_controls(task)
        if n in settings and setting_applies(n, kind)
    ]
    return "\n".join(lines)


class RunEvaluation(EvaluationPanel):
    """:class:`explorer.report.EvaluationPanel` that also draws emulator reports.

    An emulator report (:func:`explorer.generate_views.is_emulator_report`: the layout of
    :func:`engine.evaluation.emulator.score_grid`, with ``targets``) shows its headline line,
    a table of its targets (name, value, threshold, pass), its grid means and its
    ``figures/*.png``; any other report is drawn by the base class.
    """

    def update(self, run: RunDir | None, status: dict | None = None) -> bool:
        """As :meth:`EvaluationPanel.update`; an emulator report gets its own summary line."""
        changed = super().update(run, status)
        if changed and self.state == "ready" and is_emulator_report(self.report):
            self.summary = emulator_summary(self.report)
        return changed

    @param.depends("report", "predictions", "state")
    def _content(self):
        if self.state == "ready" and is_emulator_report(self.report):
            return emulator_report_view(self.report, self.run_path)
        return super()._content()
