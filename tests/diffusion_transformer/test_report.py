"""The scaling report: rows from run summaries and eval logs -> CSV, correlations and figures."""

import csv
import json

import pytest

from diffusion_transformer.callbacks import training_compute
from diffusion_transformer.scaling import collect, correlations, final_values, report

# (model, patch, Gflops, final metric): the metric falls as Gflops rise, except one swap.
RUNS = [
    ("S", 8, 0.03, 40.0),
    ("S", 4, 0.10, 30.0),
    ("B", 8, 0.13, 32.0),
    ("S", 2, 0.35, 20.0),
    ("B", 4, 0.38, 15.0),
    ("B", 2, 1.41, 10.0),
]


def _fake_sweep(root, runs=RUNS, batch=32):
    for i, (model, patch, gflops, final) in enumerate(runs):
        run = root / f"{i}_DiT-{model}-{patch}"
        run.mkdir(parents=True)
        summary = {
            "model": model,
            "patch": patch,
            "gflops": gflops,
            "params": 1000,
            "global_batch": batch,
            "step": 400,
        }
        (run / "run_summary.json").write_text(json.dumps(summary))
        rows = []
        for step, value in ((200, final * 2), (400, final * 3), (400, final)):  # re-evaluated
            rows.append(
                {
                    "step": step,
                    "metric": "fd_digits",
                    "value": value,
                    "sampling_steps": 20,
                    "sampler": "ddpm",
                    "cfg_scale": 1.0,
                    "num_samples": 200,
                    "final": False,
                    "gflops": gflops,
                    "sampling_compute": gflops * 20,
                }
            )
        for steps in (10, 40):
            rows.append(
                {
                    "step": 400,
                    "metric": "fd_digits",
                    "value": final * 20 / steps,
                    "sampling_steps": steps,
                    "sampler": "ddpm",
                    "cfg_scale": 1.0,
                    "num_samples": 200,
                    "final": True,
                    "gflops": gflops,
                    "sampling_compute": gflops * steps,
                }
            )
        (run / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_compute_conventions_of_section_2_5():
    assert training_compute(118.6, 256, 400_000) == pytest.approx(118.6 * 256 * 400_000 * 3)


def test_collect_joins_summaries_and_keeps_the_latest_reevaluation(tmp_path):
    _fake_sweep(tmp_path)
    rows = collect(tmp_path)
    assert len(rows) == 6 * 4  # (200, 400) at 20 steps + 10 and 40 steps at the end
    finals = final_values(rows, "fd_digits")
    assert [p["value"] for p in finals] == [40.0, 30.0, 32.0, 20.0, 15.0, 10.0]
    b2 = next(p for p in finals if p["model"] == "B" and p["patch"] == 2)
    assert b2["train_compute"] == pytest.approx(1.41 * 32 * 400 * 3)


def test_report_writes_csv_figures_and_the_rank_correlation(tmp_path, capsys):
    _fake_sweep(tmp_path / "sweep")
    result = report(tmp_path / "sweep")
    with open(result["csv"]) as f:
        table = list(csv.DictReader(f))
    assert {"model", "patch", "gflops", "train_compute", "metric", "value", "step"} <= set(table[0])
    # Spearman over six runs with one adjacent swap: 1 - 6 * 2 / (6 * 35) = 0.943 (negative).
    assert result["correlations"]["spearman"] == pytest.approx(-(1 - 12 / 210))
    assert result["correlations"]["pearson_log_gflops"] < -0.9
    for png in result["figures"]:
        assert png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG"
    assert "Spearman = -0.943" in capsys.readouterr().out


def test_report_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        collect(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="RunSummary"):
        collect(tmp_path / "empty")
    _fake_sweep(tmp_path / "sweep")
    with pytest.raises(ValueError, match="was not evaluated"):
        report(tmp_path / "sweep", metric="fid")


def test_correlation_needs_three_runs():
    two = [{"gflops": 1.0, "value": 2.0}, {"gflops": 2.0, "value": 1.0}]
    assert correlations(two)["runs"] == 2


def test_report_logs_table_and_scatter_to_offline_wandb_without_an_account(tmp_path, monkeypatch):
    _fake_sweep(tmp_path / "sweep")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    result = report(tmp_path / "sweep", wandb="offline")
    assert not (tmp_path / "wandb").exists()  # not in the current directory: under the report
    runs = list((tmp_path / "sweep" / "report" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and result["wandb"] == runs[0]
    assert list(runs[0].glob("*.wandb")), "the offline run holds its log for a later wandb sync"


def test_two_runs_title_says_why_there_is_no_correlation_and_axes_show_plain_values(
    tmp_path, monkeypatch
):
    from diffusion_transformer import scaling as report_module

    seen = []
    save = report_module.save_figure

    def capture(fig, path):
        fig.canvas.draw()
        ax = fig.axes[0]
        seen.append((ax.get_title(), ax.yaxis.get_offset_text().get_text()))
        return save(fig, path)

    monkeypatch.setattr(report_module, "save_figure", capture)
    _fake_sweep(tmp_path / "sweep", runs=[("S", 8, 0.03, 779.91), ("B", 8, 0.13, 779.95)])
    result = report(tmp_path / "sweep")
    assert result["correlations"]["runs"] == 2
    title, offset = seen[0]
    assert "correlations need at least 3 runs; 2 have results" in title and "nan" not in title
    # Valid JSON: null (and why), never NaN.
    text = (tmp_path / "sweep" / "report" / "correlations.json").read_text()

    def refuse(constant):
        raise AssertionError(f"{constant} in correlations.json")

    corr = json.loads(text, parse_constant=refuse)
    assert corr["spearman"] is None and corr["pearson_log_gflops"] is None
    assert "need at least 3 runs" in corr["note"]
    assert [o for _, o in seen] == ["", "", ""]  # no "+7.799e2" offset on any axis
