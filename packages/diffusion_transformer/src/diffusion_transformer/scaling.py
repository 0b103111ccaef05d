"""The thesis' scaling figures of a sweep (Figs. 2.8, 2.10, 2.11), from every run's
``run_summary.json`` and ``eval.jsonl`` (``callbacks.RunSummary``, ``callbacks.EvalMetrics``).

``report`` writes, to ``<sweep>/report`` or ``out``:

- ``fid_vs_gflops.csv``: one row per (run, metric, step, sampling steps) with ``model``, ``patch``,
  ``gflops``, ``train_compute``, ``metric``, ``value``, ``step``, ``sampling_steps``,
  ``sampling_compute``;
- ``metric_vs_gflops.png`` (Fig. 2.8): the final value of each run against model Gflops, with the
  Pearson correlation (against log Gflops) and Spearman rank correlation printed and in the title;
- ``metric_vs_train_compute.png`` (Fig. 2.10): values over training against training compute;
- ``metric_vs_sampling_compute.png`` (Fig. 2.11): final values over sampling steps against
  sampling compute per image;
- ``correlations.json``;

and logs the same table and figures as one W&B run (``wandb.Table``, ``wandb.plot.scatter``).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from common.checkpoint import write_json
from common.training.runs import expected_jobs, read_job
from diffusion_transformer import recipes
from diffusion_transformer.recipes import (
    by_run,
    curve_over_training,
    main_sampling,
    sampled_as,
    save_figure,
)

COLUMNS = (
    "name",
    "model",
    "patch",
    "gflops",
    "params",
    "global_batch",
    "train_compute",
    "metric",
    "value",
    "step",
    "sampler",
    "sampling_steps",
    "nfe",
    "sampling_compute",
    "cfg_scale",
    "cfg_interval",
    "num_samples",
    "cpu_seconds",
    "seed",
    "recipe",
    "run_dir",
)
MODEL_ORDER = {"S": 0, "B": 1, "L": 2, "XL": 3}


def collect(root: str | Path) -> list[dict[str, Any]]:
    """All evaluation rows under ``root``, each joined with its run's summary and the overrides
    of its ``job.json``; a re-evaluated (run, metric, step, sampler, steps) after a resume keeps
    its latest value."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory: pass a multirun directory of train")
    rows: dict[tuple, dict[str, Any]] = {}
    summaries = sorted(root.rglob("run_summary.json"))
    if not summaries:
        raise FileNotFoundError(
            f"no run_summary.json under {root}: run the sweep with callbacks=default (the "
            "RunSummary callback writes it) and eval.reference set"
        )
    for path in summaries:
        summary = json.loads(path.read_text())
        evals = path.parent / "eval.jsonl"
        if not evals.is_file():
            continue
        overrides = (read_job(path.parent) or {}).get("overrides") or []
        for line in evals.read_text().splitlines():
            if not line.strip():
                continue
            e = json.loads(line)
            row = {**summary, **e, "run_dir": str(path.parent), "overrides": overrides}
            row["model"], row["patch"] = summary["model"], summary["patch"]
            row["train_compute"] = summary["gflops"] * summary["global_batch"] * e["step"] * 3
            key = (row["run_dir"], e["metric"], e["step"], e.get("sampler"), e["sampling_steps"])
            rows[key] = row
    if not rows:
        raise FileNotFoundError(f"runs under {root} have no eval.jsonl: set eval.reference")
    return sorted(rows.values(), key=lambda r: (r["run_dir"], r["metric"], r["step"]))


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def final_values(rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Per run: the row of ``metric`` at the last step with the run's main sampler and steps."""
    out = []
    for run_rows in by_run(rows, metric).values():
        main = main_sampling(run_rows)
        out.append(max((r for r in run_rows if sampled_as(r) == main), key=lambda r: r["step"]))
    return sorted(out, key=lambda r: r["gflops"])


def correlations(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Pearson (value vs log10 Gflops) and Spearman (ranks) correlation over runs; ``None`` (JSON
    null) with a ``note`` saying why under 3 runs or when all have the same Gflops."""
    from scipy.stats import pearsonr, spearmanr

    note = None
    if len(points) < 3:
        note = f"correlations need at least 3 runs; {len(points)} have results"
    elif len({p["gflops"] for p in points}) == 1:
        note = f"correlations need runs of different Gflops; all {len(points)} have the same"
    if note:
        return {"pearson_log_gflops": None, "spearman": None, "runs": len(points), "note": note}
    x = np.log10([p["gflops"] for p in points])
    y = np.array([p["value"] for p in points])
    return {
        "pearson_log_gflops": float(pearsonr(x, y).statistic),
        "spearman": float(spearmanr(x, y).statistic),
        "runs": len(points),
    }


def runs_of(rows: list[dict[str, Any]], metric: str) -> list[list[dict[str, Any]]]:
    """The rows of ``metric`` grouped by run, runs ordered by Gflops."""
    return sorted(by_run(rows, metric).values(), key=lambda rr: rr[0]["gflops"])


def curve_over_sampling_steps(run_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fig. 2.11: the final model of one run at each step count of its main sampler."""
    last = max(r["step"] for r in run_rows)
    sampler = main_sampling(run_rows)[0]
    return sorted(
        (r for r in run_rows if r["step"] == last and r.get("sampler") == sampler),
        key=lambda r: r["sampling_steps"],
    )


def _style(row: dict[str, Any]) -> dict[str, Any]:
    import matplotlib.pyplot as plt

    colors = plt.get_cmap("viridis")
    idx = MODEL_ORDER.get(str(row["model"]), 0)
    markers = {2: "o", 4: "s", 8: "^"}
    return {"color": colors(idx / 3), "marker": markers.get(int(row["patch"]), "D")}


def _label(row: dict[str, Any]) -> str:
    return f"DiT-{row['model']}/{row['patch']}"


def plot_all(rows: list[dict[str, Any]], metric: str, out: Path) -> tuple[list[Path], dict]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    points = final_values(rows, metric)
    corr = correlations(points)

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for p in points:
        ax.scatter(p["gflops"], p["value"], s=60, **_style(p))
        ax.annotate(
            _label(p),
            (p["gflops"], p["value"]),
            fontsize=7,
            xytext=(4, 4),
            textcoords="offset points",
        )
    ax.set_xscale("log")
    ax.set_xlabel("Transformer Gflops (forward, per image)")
    ax.set_ylabel(metric)
    ax.ticklabel_format(axis="y", useOffset=False)
    if corr["spearman"] is None:
        stats = corr["note"]
    else:
        stats = f"Pearson r={corr['pearson_log_gflops']:.2f}, Spearman={corr['spearman']:.2f}"
    ax.set_title(f"{metric} vs Gflops  ({stats})", fontsize=9)
    paths.append(save_figure(fig, out / "metric_vs_gflops.png"))

    runs = runs_of(rows, metric)
    for curve_of, x_key, x_label, title, name in (
        (curve_over_training, "train_compute", "Training compute (Gflops)", "training compute",
         "metric_vs_train_compute.png"),
        (curve_over_sampling_steps, "sampling_compute", "Sampling compute per image (Gflops)",
         "sampling compute (sampling steps varied)", "metric_vs_sampling_compute.png"),
    ):  # fmt: skip
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for run_rows in runs:
            curve = curve_of(run_rows)
            ax.plot(
                [r[x_key] for r in curve],
                [r["value"] for r in curve],
                label=_label(run_rows[0]),
                **(_style(curve[0]) if curve else {}),
            )
        ax.set_xscale("log")
        ax.set_xlabel(x_label)
        ax.set_ylabel(metric)
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.legend(fontsize=7)
        ax.set_title(f"{metric} vs {title}", fontsize=9)
        paths.append(save_figure(fig, out / name))
    return paths, corr


# ----------------------------------------------------------------------------- sweep status
def job_records(root: Path) -> dict[int, dict[str, Any]]:
    """``job.json`` of every job folder under ``root`` (``common.training.runs``), by job number."""
    records = {}
    for path in sorted(Path(root).rglob("job.json")):
        record = json.loads(path.read_text())
        if record.get("job_num") is not None:
            records[int(record["job_num"])] = {**record, "run_dir": str(path.parent)}
    return records


def missing_jobs(root: Path) -> list[str]:
    """One line per job of the sweep that has not finished: failed, interrupted or never run."""
    expected = expected_jobs(root)
    records = job_records(root)
    if expected is None:
        return [
            f"job {num} ({' '.join(r.get('overrides') or [])}): {r.get('status')}"
            for num, r in sorted(records.items())
            if r.get("status") != "finished"
        ]
    lines = []
    for num, overrides in enumerate(expected):
        record = records.get(num)
        status = "not started" if record is None else record.get("status")
        if status == "running":
            status = "interrupted (or still running)"
        if status == "failed" and record.get("error"):
            status = f"failed: {record['error'].splitlines()[0][:200]}"
        if status != "finished":
            lines.append(f"job {num} ({' '.join(overrides)}): {status}")
    return lines


# ----------------------------------------------------------------------------- W&B
def sweep_wandb_target(root: Path) -> tuple[str | None, str]:
    """(project, group) the sweep's runs logged to: read from their ``job.json``; the group
    defaults to the sweep folder's name, as ``common.training.runs`` names it."""
    records = job_records(root)
    first = records[min(records)] if records else {}
    return first.get("project"), first.get("group") or Path(root).absolute().name


def log_wandb(
    rows: list[dict[str, Any]],
    metric: str,
    pngs: list[Path],
    corr: dict,
    mode: str,
    project: str,
    group: str,
    out: Path,
    missing: list[str],
    compared: dict[str, Any],
) -> Path:
    """The report as one W&B run of the sweep's group (``job_type=report``, files under ``out``):
    the full table, scatter plots of the metric against Gflops (Fig. 2.8), training compute
    (Fig. 2.10) and sampling compute (Fig. 2.11), one line per run of the metric against the
    training step, the PNG figures, the correlations and the recipe comparison. Returns the run's
    local folder."""
    import wandb

    run = wandb.init(
        project=project,
        group=group,
        job_type="report",
        name=f"report-{group}",
        dir=str(out),
        mode=mode,
        config={"metric": metric, "sweep": group, "missing_jobs": missing},
    )
    runs = runs_of(rows, metric)

    def points(keys: list[str], rows_of) -> Any:  # one row per point: name, keys..., metric
        data = [[_label(r), *(r.get(k) for k in keys), r["value"]] for r in rows_of]
        return wandb.Table(columns=["name", *keys, metric], data=data)

    table = wandb.Table(columns=list(COLUMNS), data=[[r.get(c) for c in COLUMNS] for r in rows])
    finals = points(["gflops", "params"], final_values(rows, metric))
    training = points(
        ["step", "train_compute"], [r for rr in runs for r in curve_over_training(rr)]
    )
    sampling = points(
        ["sampling_steps", "sampling_compute"],
        [r for rr in runs for r in curve_over_sampling_steps(rr)],
    )
    curves = [curve_over_training(run_rows) for run_rows in runs]
    run.log(
        {
            "fid_vs_gflops": table,
            f"{metric}_vs_gflops": wandb.plot.scatter(
                finals, "gflops", metric, title=f"{metric} vs Gflops (Fig. 2.8)"
            ),
            f"{metric}_vs_train_compute": wandb.plot.scatter(
                training, "train_compute", metric, title=f"{metric} vs training compute (Fig. 2.10)"
            ),
            f"{metric}_vs_sampling_compute": wandb.plot.scatter(
                sampling,
                "sampling_compute",
                metric,
                title=f"{metric} vs sampling compute (Fig. 2.11)",
            ),
            **{
                f"{metric}_vs_{x}": wandb.plot.line_series(
                    xs=[[r.get(x) for r in c] for c in curves],
                    ys=[[r["value"] for r in c] for c in curves],
                    keys=[f"{rr[0]['recipe']} seed {rr[0].get('seed')}" for rr in runs],
                    title=f"{metric} over training, one line per run",
                    xname=x,
                )
                for x in ("step", "cpu_seconds")
            },
            **recipes.wandb_entries(wandb, compared, metric),
            **{f"figures/{p.stem}": wandb.Image(str(p)) for p in pngs},
            **{f"correlation/{k}": v for k, v in corr.items() if isinstance(v, (int, float))},
        }
    )
    folder = Path(run.dir).parent
    run.finish()
    return folder


def report(
    root: str | Path,
    out: str | Path | None = None,
    metric: str | None = None,
    wandb: str | None = None,
    project: str | None = None,
    group: str | None = None,
    baseline: str | None = None,
) -> dict[str, Any]:
    """Write the table, figures and correlations of a sweep, and its recipe comparison
    (``diffusion_transformer.recipes``: ``baseline`` is the recipe the others must reach), and,
    with ``wandb="offline"`` or ``"online"`` (the W&B mode), log them as one run of the sweep's W&B
    project and group (``project``/``group`` override what the runs recorded)."""
    rows = collect(root)
    metrics = sorted({r["metric"] for r in rows})
    if metric is None:
        metric = next((m for m in ("fid", "fd_digits") if m in metrics), metrics[0])
    if metric not in metrics:
        raise ValueError(f"metric {metric!r} was not evaluated in these runs; found {metrics}")
    out = Path(out) if out else Path(root) / "report"
    compared = recipes.write(rows, metric, out, baseline)
    csv_path = write_csv(rows, out / "fid_vs_gflops.csv")
    pngs, corr = plot_all(rows, metric, out)
    missing = missing_jobs(Path(root))
    write_json({"metric": metric, **corr, "missing_jobs": missing}, out / "correlations.json")
    print(f"{'run':<12s} {'Gflops':>9s} {metric:>12s}")
    for p in final_values(rows, metric):
        print(f"{_label(p):<12s} {p['gflops']:9.4f} {p['value']:12.4f}")
    if corr["spearman"] is None:
        print(corr["note"])
    else:
        print(
            f"Pearson r({metric}, log Gflops) = {corr['pearson_log_gflops']:.3f}; "
            f"Spearman = {corr['spearman']:.3f} over {corr['runs']} runs"
        )
    recipes.print_tables(compared, metric)
    if missing:
        print(f"missing {len(missing)} job(s) of the sweep (rerun its command to finish them):")
        for line in missing:
            print(f"  {line}")
    print(f"table   : {csv_path}")
    for path in (*compared["csv"], *pngs, *compared["figures"]):
        print(f"{'table' if path.suffix == '.csv' else 'figure':<8s}: {path}")
    pngs = [*pngs, *compared["figures"]]
    result = {"csv": csv_path, "figures": pngs, "correlations": corr, "metric": metric}
    result["missing"] = missing
    result["recipes"] = compared
    if wandb is not None:
        recorded_project, recorded_group = sweep_wandb_target(Path(root))
        result["wandb"] = log_wandb(
            rows,
            metric,
            pngs,
            corr,
            wandb,
            project or recorded_project or "dit",
            group or recorded_group,
            out,
            missing,
            compared,
        )
        print(f"W&B run : {result['wandb']} (group {group or recorded_group})")
    return result
