"""Recipes compared over seeds (issue 30's convergence study and few-step table), from the rows of
``scaling.collect``.

A run's recipe is named by the overrides that tell the report's runs apart, the seed excepted:
``experiment=<name>`` shows as ``<name>``, any other as ``key=value`` (``digits``,
``digits_modern``, ``digits diffusion=flow``). ``write`` puts, beside the scaling figures:

- ``metric_vs_step.png`` and ``metric_vs_cpu_time.png``: the metric of the periodic evaluations
  against the training step and the training CPU time (``EvalMetrics.cpu_seconds``), one thin line
  per seed and the mean over seeds in bold, one colour per recipe;
- ``metric_vs_nfe.png``: the final model of each recipe scored by every sampler it was scored with
  (``eval.final_samplers``), mean over seeds against network evaluations per sample;
- ``recipes.csv``: per run, its final value and, against the ``baseline`` recipe's mean final
  value, the first step and CPU time at which the run reached it;
- ``samplers.csv``: per recipe, sampler and step count, the mean, min and max over seeds.

``print_tables`` prints both tables and ``wandb_entries`` gives them to the report's W&B run.
The helpers on one run's rows (its main sampler, its curve over training) live here too, and
``scaling`` imports them: the scaling report calls this module, not the reverse.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

RECIPE_COLUMNS = ("recipe", "seed", "final_value", "final_step", "cpu_seconds", "reached_step",
                  "reached_cpu_seconds", "run_dir")  # fmt: skip
STYLES = ("-", "--", ":", "-.")  # one per recipe in the NFE figure (colours: samplers)
NOT_RECIPE = ("seed", "eval.final_samplers", "eval.every_n_steps")  # not what is trained
SAMPLER_COLUMNS = ("recipe", "sampler", "sampling_steps", "nfe", "value_mean", "value_min",
                   "value_max", "seeds")  # fmt: skip


# ----------------------------------------------------------------------------- rows of one run
def by_run(rows: list[dict[str, Any]], metric: str) -> dict[str, list[dict[str, Any]]]:
    """The rows of ``metric``, by run folder."""
    out: dict[str, list] = defaultdict(list)
    for r in rows:
        if r["metric"] == metric:
            out[r["run_dir"]].append(r)
    return out


def main_sampling(run_rows: list[dict[str, Any]]) -> tuple[str | None, int]:
    """(sampler, steps) of a run's periodic evaluations: those of its earliest row."""
    first = min(run_rows, key=lambda r: (r["step"], r.get("final", False)))
    return first.get("sampler"), first["sampling_steps"]


def sampled_as(row: dict[str, Any]) -> tuple[str | None, int]:
    return row.get("sampler"), row["sampling_steps"]


def curve_over_training(run_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fig. 2.10: the periodic evaluations of one run (its main sampler and steps), by step."""
    main = main_sampling(run_rows)
    return sorted(
        (r for r in run_rows if sampled_as(r) == main and r["step"] > 0), key=lambda r: r["step"]
    )


def save_figure(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- recipes
def label_recipes(rows: list[dict[str, Any]]) -> list[str]:
    """Set ``row["recipe"]`` from each run's overrides (``job.json``, in ``row["overrides"]``):
    the keys whose values differ between runs, ``seed``, ``eval.final_samplers`` and
    ``eval.every_n_steps`` (when and with what a model is scored) and ``hydra.*`` excepted.
    Returns the recipes, the plainest (fewest such overrides, then by name) first."""

    def parsed(row) -> dict[str, str]:
        pairs = (o.lstrip("+~").partition("=") for o in row.get("overrides") or [])
        return {k: v for k, _, v in pairs if k not in NOT_RECIPE and not k.startswith("hydra.")}

    runs = {r["run_dir"]: parsed(r) for r in rows}
    keys = sorted({k for o in runs.values() for k in o}, key=lambda k: (k != "experiment", k))
    differing = [k for k in keys if len({o.get(k) for o in runs.values()}) > 1]
    names = {}
    for run_dir, o in runs.items():
        parts = [o[k] if k == "experiment" else f"{k}={o[k]}" for k in differing if k in o]
        names[run_dir] = (" ".join(parts) or "all runs", len(parts))
    for r in rows:
        r["recipe"] = names[r["run_dir"]][0]
    return [n for n, _ in sorted(set(names.values()), key=lambda x: (x[1], x[0]))]


def run_table(rows: list[dict[str, Any]], metric: str, baseline: str) -> list[dict[str, Any]]:
    """One row per finished run (a run still training has no final value): final value, step and
    CPU time, and where it first reached the mean final value of ``baseline`` (lower is better;
    None when it never did)."""
    curves = {d: curve_over_training(rr) for d, rr in by_run(rows, metric).items()}
    curves = {d: c for d, c in curves.items() if c and c[-1].get("final")}
    target = np.mean([c[-1]["value"] for c in curves.values() if c[-1]["recipe"] == baseline])
    table = []
    for run_dir, curve in sorted(curves.items(), key=lambda kv: (kv[1][0]["recipe"], kv[0])):
        last = curve[-1]
        reached = next((r for r in curve if r["value"] <= target), None)
        table.append({
            "recipe": last["recipe"], "seed": last.get("seed"), "final_value": last["value"],
            "final_step": last["step"], "cpu_seconds": last.get("cpu_seconds"),
            "reached_step": reached and reached["step"],
            "reached_cpu_seconds": reached and reached.get("cpu_seconds"), "run_dir": run_dir,
        })  # fmt: skip
    return table


def sampler_table(rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Per recipe, sampler and steps: the final models' values over seeds (and their NFE); a
    run still training has no final model yet and counts in no cell."""
    cells: dict[tuple, list] = defaultdict(list)
    for r in rows:
        if r["metric"] == metric and r.get("final"):
            cells[(r["recipe"], r.get("sampler"), r["sampling_steps"])].append(r)
    table = []
    for (recipe, sampler, steps), cell in sorted(
        cells.items(), key=lambda kv: (kv[0][0], kv[0][1] or "", kv[0][2])
    ):
        values = [r["value"] for r in cell]
        nfe = [r["nfe"] for r in cell if r.get("nfe") is not None]
        table.append({
            "recipe": recipe, "sampler": sampler, "sampling_steps": steps,
            "nfe": float(np.mean(nfe)) if nfe else None, "value_mean": float(np.mean(values)),
            "value_min": min(values), "value_max": max(values), "seeds": len(cell),
        })  # fmt: skip
    return table


def sampler_curves(rows: list[dict[str, Any]], metric: str) -> dict[tuple, list[tuple]]:
    """Per (recipe, sampler): ``(nfe, mean value, seeds)`` over its step counts, each mean over
    the seeds scored at every step count of the curve (the main sampler scores every seed, the
    others perhaps one: a curve must not mix them)."""
    cells: dict[tuple, dict] = defaultdict(dict)
    for r in rows:
        if r["metric"] == metric and r.get("final") and r.get("nfe") is not None:
            cells[(r["recipe"], r.get("sampler"), r["sampling_steps"])][r.get("seed")] = r
    by_curve: dict[tuple, list] = defaultdict(list)
    for (recipe, sampler, _), seeds in cells.items():
        by_curve[(recipe, sampler)].append(seeds)
    curves = {}
    for key, steps in sorted(by_curve.items()):
        common = set.intersection(*(set(s) for s in steps))
        if common:
            curves[key] = sorted(
                (*(float(np.mean([s[seed][k] for seed in common])) for k in ("nfe", "value")),
                 len(common)) for s in steps
            )  # fmt: skip
    return curves


def _write_csv(table: list[dict[str, Any]], columns: tuple[str, ...], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(table)
    return path


def _mean_curve(curves: list[list[dict[str, Any]]], x_key: str) -> tuple[list, list]:
    """Mean x and metric over seeds at the steps every seed was evaluated at."""
    steps = set.intersection(*({r["step"] for r in c} for c in curves))
    xs, ys = [], []
    for step in sorted(steps):
        at = [next(r for r in c if r["step"] == step) for c in curves]
        xs.append(float(np.mean([r[x_key] for r in at])))
        ys.append(float(np.mean([r["value"] for r in at])))
    return xs, ys


def plot(rows: list[dict[str, Any]], metric: str, recipes: list[str], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(recipes)}
    curves: dict[str, list] = defaultdict(list)
    for run_rows in by_run(rows, metric).values():
        curve = curve_over_training(run_rows)
        if curve and curve[-1].get("final"):  # finished runs: their means share every step
            curves[curve[0]["recipe"]].append(curve)
    paths = []
    axes = (("step", "training step", "metric_vs_step.png"),
            ("cpu_seconds", "training CPU time (s)", "metric_vs_cpu_time.png"))  # fmt: skip
    for x_key, x_label, name in axes:
        fig, ax = plt.subplots(figsize=(6, 4))
        for recipe in recipes:
            runs = [c for c in curves.get(recipe, []) if all(r.get(x_key) is not None for r in c)]
            for c in runs:
                ax.plot([r[x_key] for r in c], [r["value"] for r in c], color=colors[recipe],
                        alpha=0.3, lw=0.8)  # fmt: skip
            if runs:
                xs, ys = _mean_curve(runs, x_key)
                ax.plot(xs, ys, color=colors[recipe], lw=2, marker="o", ms=3,
                        label=f"{recipe} ({len(runs)} seeds)")  # fmt: skip
        ax.set_yscale("log")
        ax.set_xlabel(x_label)
        ax.set_ylabel(metric)
        ax.legend(fontsize=7)
        ax.set_title(f"{metric} over training: seeds thin, their mean bold", fontsize=9)
        paths.append(save_figure(fig, out / name))
    fig, ax = plt.subplots(figsize=(6, 4))
    curves_nfe = sampler_curves(rows, metric)
    samplers = sorted({sampler for _, sampler in curves_nfe})
    for (recipe, sampler), points in curves_nfe.items():
        nfe, values, seeds = zip(*points, strict=True)
        ax.plot(nfe, values, marker="o", ms=3, ls=STYLES[recipes.index(recipe) % len(STYLES)],
                color=plt.get_cmap("tab10")(samplers.index(sampler) % 10),
                label=f"{recipe}: {sampler} ({seeds[0]} seed{'s' * (seeds[0] > 1)})")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("network evaluations per sample (NFE)")
    ax.set_ylabel(metric)
    ax.legend(fontsize=6)
    ax.set_title(f"{metric} of the final models against sampling NFE", fontsize=9)
    paths.append(save_figure(fig, out / "metric_vs_nfe.png"))
    return paths


def write(
    rows: list[dict[str, Any]], metric: str, out: Path, baseline: str | None = None
) -> dict[str, Any]:
    """The recipe figures and tables of ``rows`` (see the module docstring); ``baseline``
    (default: the plainest recipe) is the recipe whose final value the others must reach."""
    recipes = label_recipes(rows)
    baseline = baseline or recipes[0]
    if baseline not in recipes:
        raise ValueError(
            f"baseline={baseline!r} is not a recipe of these runs; pass one of "
            f"{', '.join(repr(r) for r in recipes)}"
        )
    out.mkdir(parents=True, exist_ok=True)
    runs = run_table(rows, metric, baseline)
    samplers = sampler_table(rows, metric)
    return {
        "recipes": recipes,
        "baseline": baseline,
        "runs": runs,
        "samplers": samplers,
        "csv": [
            _write_csv(runs, RECIPE_COLUMNS, out / "recipes.csv"),
            _write_csv(samplers, SAMPLER_COLUMNS, out / "samplers.csv"),
        ],
        "figures": plot(rows, metric, recipes, out),
    }


def print_tables(compared: dict[str, Any], metric: str) -> None:
    """The recipe comparison: per run its final value and when it reached the baseline's mean
    final value; per recipe and sampler the final models' values against NFE."""
    print(f"\nrecipes against {compared['baseline']!r} (its mean final {metric} is the target):")
    print(f"{'recipe':<34s} {'seed':>4s} {metric:>10s} {'reached at step':>16s} {'CPU s':>8s}")
    for r in compared["runs"]:
        cpu = r["reached_cpu_seconds"]
        print(
            f"{r['recipe']:<34s} {r['seed'] if r['seed'] is not None else '-':>4} "
            f"{r['final_value']:10.3f} {r['reached_step'] or 'never':>16} "
            f"{'-' if cpu is None else f'{cpu:.0f}':>8s}"
        )
    print(f"\n{'recipe':<34s} {'sampler':<9s} {'steps':>5s} {'NFE':>6s} {metric + ' mean':>14s}")
    for t in compared["samplers"]:
        nfe = "-" if t["nfe"] is None else f"{t['nfe']:.0f}"
        print(
            f"{t['recipe']:<34s} {t['sampler'] or '-':<9s} {t['sampling_steps']:>5d} {nfe:>6s} "
            f"{t['value_mean']:14.3f}"
        )


def _wandb_table(wandb, table: list[dict[str, Any]]) -> Any:
    columns = list(table[0]) if table else ["empty"]
    return wandb.Table(columns=columns, data=[[t.get(c) for c in columns] for t in table])


def wandb_entries(wandb, compared: dict[str, Any], metric: str) -> dict[str, Any]:
    """The comparison for the report's W&B run: both tables and the metric against NFE."""
    with_nfe = [t for t in compared["samplers"] if t["nfe"] is not None]
    return {
        "recipes": _wandb_table(wandb, compared["runs"]),
        "samplers": _wandb_table(wandb, compared["samplers"]),
        f"{metric}_vs_nfe": wandb.plot.scatter(
            _wandb_table(wandb, with_nfe),
            "nfe",
            "value_mean",
            title=f"{metric} of the final models against NFE, per recipe and sampler",
        ),  # fmt: skip
    }
