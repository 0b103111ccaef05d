"""Evaluate a trained G.pt: ``python -m gpt_checkpoints.evaluate ckpt=<run dir>``.

Writes ``results.json`` and PNG plots to the output folder (and to the loggers of ``logger=``:
``wandb`` (offline unless ``logger.wandb.offline=false``), ``csv`` or ``none``): one G.pt step vs
one tuned step of hand-designed optimizers (Fig. 3.3; keys ``one_step_gpt``,
``one_step_best_sgd``, ``one_step_best_adam``, ...), SGD/Adam optimisation curves vs one G.pt step
(Fig. 3.4), prompt alignment R^2 (Sec. 3.4.4; ``prompt_alignment_r2``), recursive prompting from
out-of-distribution initialisations (Fig. 3.6) and the nearest-neighbour memorisation score
(Sec. 3.5, Fig. 3.9) and the memorisation baselines of Zeng et al. 2025 with their
performance-vs-novelty figure (``novelty``, ``memorization.novelty_baselines``); the last two
read the training and test runs of the dataset the G.pt was trained on (or ``dataset=``). G.pt
samples on ``device=``.
"""

from __future__ import annotations

from omegaconf import DictConfig

from common.cli import hydra_main

# What makes sense for each number this command reads (common.errors.check_values).
CHECKS = {
    "test_fraction": "(0,1)|null",
    "split_seed": "int>=0|null",
    "prompt": ">=0|null",
    "num_nets": "int>=1",
    "curve_steps": "int>=1",
    "alignment_nets": "int>=1",
    "alignment_prompts": "int>=2",
    "recursive_steps": "int>=1",
    "memorization_runs": "int>=1",
    "memorization_prompts": "int>=1",
    "novelty_nets": "int>=2",
    "noise_levels": ">0",
    "sampling_steps": "int>=1|null",
}


@hydra_main("evaluate", checks=CHECKS)
def main(cfg: DictConfig) -> None:
    from gpt_checkpoints.analysis.jobs import evaluate_gpt

    evaluate_gpt(cfg)


if __name__ == "__main__":
    from gpt_checkpoints.evaluate import main as _main

    _main()
