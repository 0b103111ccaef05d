"""The figures of ``python -m gpt_checkpoints.evaluate`` (thesis Figs. 3.3, 3.4, 3.6, Sec. 3.4.4;
Zeng et al. 2025, Figs. 3-4), written as PNG files with matplotlib's Agg backend."""

from __future__ import annotations

from pathlib import Path

import torch


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)


def plot_one_step(res: dict, path: Path) -> None:
    names = ["G.pt", *res["optimizers"]]
    values = [res["one_step_gpt"], *(v["value"] for v in res["optimizers"].values())]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(names, values, color=["tab:red"] + ["tab:gray"] * (len(names) - 1))
    ax.axhline(res["initial"], ls="--", c="k", lw=1, label="initial")
    ax.set_ylabel(res["metric"])
    ax.set_title("one step: G.pt vs tuned optimizers (Fig. 3.3)")
    ax.legend()
    _save(fig, path)


def plot_curves(res: dict, gpt_value: float, metric: str, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, curve in res["curves"].items():
        steps = [max(int(s), 1) for s in curve]
        ax.plot(steps, list(curve.values()), marker="o", ms=3, label=name)
    ax.axhline(gpt_value, c="tab:red", label="G.pt, one step")
    ax.set_xscale("log")
    ax.set_xlabel("optimizer steps")
    ax.set_ylabel(metric)
    ax.set_title("optimization curves (Fig. 3.4)")
    ax.legend()
    _save(fig, path)


def plot_alignment(res: dict, metric: str, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4))
    for prompts, achieved in zip(res["prompts"], res["achieved"], strict=True):
        ax.plot(prompts, achieved, c="tab:blue", alpha=0.4, lw=1)
    flat = [p for row in res["prompts"] for p in row]
    ax.plot([min(flat), max(flat)], [min(flat), max(flat)], "k--", lw=1, label="ideal")
    ax.set_xlabel(f"prompted {metric}")
    ax.set_ylabel(f"achieved {metric}")
    ax.set_title(f"prompt alignment R^2 = {res['prompt_alignment_r2']:.3f}")
    ax.legend()
    _save(fig, path)


def plot_recursive(res: dict, metric: str, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for scheme, trace in res.items():
        ax.plot(range(len(trace)), trace, marker="o", ms=3, label=scheme)
    ax.set_xlabel("G.pt steps (recursive prompting)")
    ax.set_ylabel(metric)
    ax.set_title("out-of-distribution initialisations (Fig. 3.6)")
    ax.legend()
    _save(fig, path)


NOVELTY_STYLE = {  # method -> (label, colour, marker)
    "gpt": ("G.pt, one step", "tab:red", "o"),
    "nearest_prompted": ("nearest training ckpt with the prompted metric", "k", "s"),
    "interpolation": ("interpolation of two training ckpts (aligned)", "tab:purple", "D"),
    "independent_runs": ("independent SGD runs (held out)", "tab:green", "^"),
}


def plot_novelty(res: dict, path: Path) -> None:
    """Zeng et al. 2025, Figs. 3-4: metric against novelty, per network, per method."""
    plt = _pyplot()
    metric = res["metric"]
    methods = res["methods"]
    axes_keys = [k for k in ("similarity", "distance") if k in next(iter(methods.values()))]
    fig, axes = plt.subplots(1, len(axes_keys), figsize=(5.5 * len(axes_keys), 4), squeeze=False)
    noise = [m for m in methods if m.startswith("noise_")]
    greys = plt.cm.Blues(torch.linspace(0.4, 0.9, max(len(noise), 1)).tolist())
    for ax, key in zip(axes[0], axes_keys, strict=True):
        for name, row in methods.items():
            if name in NOVELTY_STYLE:
                label, colour, marker = NOVELTY_STYLE[name]
            else:
                label, colour, marker = (
                    f"training ckpt + noise {name[6:]}",
                    greys[noise.index(name)],
                    "x",
                )
            ax.scatter(
                row[key], row[metric], s=14, c=[colour], marker=marker, alpha=0.7, label=label
            )
        ax.set_xlabel(
            "max IoU of mispredictions with a training ckpt (1 = same errors)"
            if key == "similarity"
            else "distance to nearest training ckpt (aligned, normalised space)"
        )
        ax.set_ylabel(metric)
    axes[0][0].set_title(f"performance vs novelty, prompt {res['prompt']:.3g}")
    axes[0][-1].legend(fontsize=7)
    _save(fig, path)


def print_novelty(res: dict) -> None:
    metric = res["metric"]
    keys = [metric] + [k for k in ("similarity", "distance") if k in res["methods"]["gpt"]]
    print(
        f"{'novelty (mean of ' + str(res['num_nets']) + ')':<26}"
        + "".join(f"{k:>12}" for k in keys)
    )
    for name, row in res["methods"].items():
        print(f"  {name:<24}" + "".join(f"{row['mean'][k]:>12.4f}" for k in keys))
