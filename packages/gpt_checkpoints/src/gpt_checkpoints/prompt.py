"""Prompt G.pt: ``python -m gpt_checkpoints.prompt ckpt=<run dir or .safetensors> prompt=0.2``.

Takes a task network's parameters, either a file (``params=net.safetensors``: a state dict of
the task network, or a flat vector under the key ``params``) or fresh ones (``init=kaiming``,
``init_seed=...``, ``num_nets=...``; refused with ``params=``), asks G.pt (on ``device=``) for
the prompted metric in one step, or ``recursive=K`` steps that feed each output back in
(Sec. 3.4.1, 3.4.3), and reports the metric the result achieves. Writes into the folder ``out=``
the updated parameters as a state dict of the task network (``prompted_params.safetensors``) and
the report (``report.json``), and prints the next command (``gpt_checkpoints.evaluate``).
"""

from __future__ import annotations

from omegaconf import DictConfig

from common.cli import hydra_main

# What makes sense for each number this command reads (common.errors.check_values).
CHECKS = {
    "num_nets": "int>=1|null",
    "prompt": ">=0|null",
    "recursive": "int>=1",
    "sampling_steps": "int>=1|null",
    "seed": "int>=0",
    "init_seed": "int>=0|null",
}


@hydra_main("prompt", checks=CHECKS)
def main(cfg: DictConfig) -> None:
    from gpt_checkpoints.analysis.jobs import prompt_gpt

    prompt_gpt(cfg)


if __name__ == "__main__":
    from gpt_checkpoints.prompt import main as _main

    _main()
