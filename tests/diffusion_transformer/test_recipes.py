"""The recipe comparison of the report (issue 30): recipes named from the runs' overrides, the
first step and CPU time at which each run reaches the baseline's mean final value, the sampler
table over seeds, and the figures, on a fake sweep whose numbers are known."""

import csv
import json

import pytest

from diffusion_transformer.recipes import label_recipes, sampler_curves
from diffusion_transformer.scaling import collect, report

STEPS = (250, 500, 750, 1000)
# recipe -> seed -> the metric at STEPS (the last one is the final value)
CURVES = {
    "digits": {0: [90.0, 40.0, 20.0, 10.0], 1: [80.0, 50.0, 25.0, 12.0]},  # mean final 11
    "digits_modern": {0: [30.0, 10.5, 6.0, 5.0], 1: [40.0, 12.0, 9.0, 7.0]},
}
SAMPLERS = {"digits": {"ddim": (8, 50)}, "digits_modern": {"euler": (8, 50), "heun": (4, 13)}}


def _fake_run(run, recipe, seed, main):
    run.mkdir(parents=True)
    overrides = [f"experiment={recipe}", f"seed={seed}", "logger=csv", "hydra.sweep.dir=x"]
    (run / "job.json").write_text(json.dumps({"status": "finished", "overrides": overrides}))
    summary = {"model": "tiny", "patch": 2, "gflops": 0.01, "params": 10, "global_batch": 64,
               "step": STEPS[-1], "seed": seed}  # fmt: skip
    (run / "run_summary.json").write_text(json.dumps(summary))
    rows = []
    curve = CURVES[recipe].get(seed, CURVES[recipe][0])
    for i, (step, value) in enumerate(zip(STEPS, curve, strict=True)):
        rows.append({"step": step, "metric": "fd_digits", "value": value, "sampler": main,
                     "sampling_steps": 25, "nfe": 25, "final": step == STEPS[-1],
                     "sampling_compute": 0.5,
                     "cpu_seconds": 10.0 * (i + 1) * (2 if recipe == "digits" else 1)})  # fmt: skip
    for sampler, steps in SAMPLERS[recipe].items():
        for n in steps:
            nfe = 2 * n - 1 if sampler == "heun" else n
            rows.append({"step": STEPS[-1], "metric": "fd_digits", "value": 100.0 / nfe + seed,
                         "sampler": sampler, "sampling_steps": n, "nfe": nfe, "final": True,
                         "sampling_compute": 0.02 * nfe,
                         "cpu_seconds": rows[-1]["cpu_seconds"]})  # fmt: skip
    (run / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _fake_sweep(root):
    job = 0
    for recipe, seeds in CURVES.items():
        for seed in seeds:
            main = "ddim" if recipe == "digits" else "euler"
            _fake_run(root / f"{job}_DiT-tiny-2", recipe, seed, main)
            job += 1
    # a third digits seed still training: scored twice (low values), no final model yet
    _fake_run(root / f"{job}_DiT-tiny-2", "digits", 2, "ddim")
    evals = root / f"{job}_DiT-tiny-2" / "eval.jsonl"
    rows = [json.loads(line) for line in evals.read_text().splitlines()[:2]]
    evals.write_text("".join(json.dumps(r | {"value": 0.5}) + "\n" for r in rows))


def test_recipes_are_named_by_the_overrides_that_differ_seed_and_final_samplers_excepted(tmp_path):
    rows = [
        {"run_dir": "a", "overrides": ["experiment=digits", "seed=0", "logger=csv"]},
        {
            "run_dir": "b",
            "overrides": [
                "experiment=digits",
                "seed=1",
                "logger=csv",
                "eval.final_samplers={ddim:[8]}",
            ],
        },
        {"run_dir": "c", "overrides": ["experiment=digits", "seed=0", "+diffusion=flow"]},
        {"run_dir": "d", "overrides": ["experiment=digits_modern", "hydra.sweep.dir=s"]},
    ]
    # experiment is shown bare, other keys as key=value; the plainest recipe comes first
    assert label_recipes(rows) == ["digits_modern", "digits diffusion=flow", "digits logger=csv"]
    names = {r["run_dir"]: r["recipe"] for r in rows}
    assert names["a"] == names["b"] == "digits logger=csv"
    assert names["c"] == "digits diffusion=flow"
    assert names["d"] == "digits_modern"
    one = [{"run_dir": "a", "overrides": ["seed=0"]}, {"run_dir": "b", "overrides": ["seed=1"]}]
    assert label_recipes(one) == ["all runs"]


def test_report_compares_recipes_over_seeds(tmp_path, capsys):
    _fake_sweep(tmp_path)
    result = report(tmp_path)
    compared = result["recipes"]
    assert compared["recipes"] == ["digits", "digits_modern"] and compared["baseline"] == "digits"
    out = tmp_path / "report"
    with open(out / "recipes.csv") as f:
        runs = {(r["recipe"], int(r["seed"])): r for r in csv.DictReader(f)}
    # target: the baseline's mean final value, 11 (seed 2, still training, neither counts nor is
    # listed). digits seed 0 reaches it at its last step, seed 1 (12) never; the modern seeds at
    # steps 500 (10.5) and 750 (9.0).
    reached = {k: (r["reached_step"], r["reached_cpu_seconds"]) for k, r in runs.items()}
    assert reached == {
        ("digits", 0): ("1000", "80.0"),
        ("digits", 1): ("", ""),
        ("digits_modern", 0): ("500", "20.0"),
        ("digits_modern", 1): ("750", "30.0"),
    }
    assert float(runs[("digits_modern", 1)]["final_value"]) == 7.0
    with open(out / "samplers.csv") as f:
        rows = csv.DictReader(f)
        cells = {(r["recipe"], r["sampler"], int(r["sampling_steps"])): r for r in rows}
    heun = cells[("digits_modern", "heun", 13)]
    assert float(heun["nfe"]) == 25 and int(heun["seeds"]) == 2
    assert float(heun["value_mean"]) == pytest.approx(100 / 25 + 0.5)
    assert (float(heun["value_min"]), float(heun["value_max"])) == pytest.approx((4.0, 5.0))
    # the main sampler's final evaluation is a cell too; the unfinished run is in none
    ddim = cells[("digits", "ddim", 25)]
    assert float(ddim["value_mean"]) == pytest.approx(11.0) and int(ddim["seeds"]) == 2
    for name in ("metric_vs_step", "metric_vs_cpu_time", "metric_vs_nfe"):
        assert (out / f"{name}.png").stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "recipes against 'digits'" in printed and "never" in printed


def test_baseline_is_a_recipe_of_the_runs(tmp_path):
    _fake_sweep(tmp_path)
    result = report(tmp_path, baseline="digits_modern")
    runs = {(r["recipe"], r["seed"]): r["reached_step"] for r in result["recipes"]["runs"]}
    assert runs[("digits", 0)] is None and runs[("digits_modern", 0)] == 750  # target 6.0
    with pytest.raises(ValueError, match="baseline='sit' is not a recipe of these runs; pass one "
                       "of 'digits', 'digits_modern'"):  # fmt: skip
        report(tmp_path, baseline="sit")


def test_collect_keeps_each_sampler_apart(tmp_path):
    _fake_sweep(tmp_path)
    rows = [r for r in collect(tmp_path) if r["run_dir"].endswith("2_DiT-tiny-2")]
    assert {(r["sampler"], r["sampling_steps"]) for r in rows if r["final"]} == {
        ("euler", 25), ("euler", 8), ("euler", 50), ("heun", 4), ("heun", 13)
    }  # fmt: skip


def test_a_sampler_curve_averages_only_the_seeds_scored_at_all_its_steps():
    """The main sampler scores every seed's final model, the others perhaps seed 0 only: the NFE
    curve of a sampler must not mix a 3-seed mean at one step count with one seed at the rest."""

    def row(seed, steps, value):
        return {"recipe": "digits", "metric": "fd_digits", "final": True, "sampler": "ddim",
                "sampling_steps": steps, "nfe": steps, "seed": seed, "value": value}  # fmt: skip

    rows = [row(0, 8, 14.0), row(0, 25, 8.0), row(1, 25, 11.0), row(2, 25, 9.0)]
    assert sampler_curves(rows, "fd_digits") == {("digits", "ddim"): [(8, 14.0, 1), (25, 8.0, 1)]}
    rows.append(row(1, 8, 20.0))  # seeds 0 and 1 at both step counts now
    assert sampler_curves(rows, "fd_digits") == {("digits", "ddim"): [(8, 17.0, 2), (25, 9.5, 2)]}
