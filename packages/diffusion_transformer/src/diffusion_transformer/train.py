"""Train a DiT: ``python -m diffusion_transformer.train [model=xl patch=2 experiment=...]``.

With no overrides it trains a small DiT on scikit-learn's digits on the CPU and prints where the
sample grid and the checkpoint are. ``resume=<run dir or .ckpt>`` continues a run: same step,
optimizer, EMA, data order, logs and W&B run. ``strategy=ddp|fsdp`` (``conf/strategy`` in
``common``) trains on several devices or nodes; ``tf32=false`` turns TF32 matmuls off on GPUs.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from common.cli import hydra_main

# What makes sense for each number this command reads (common.errors.check_values).
CHECKS = {
    "seed": "int>=0",
    "patch": "int>=1",
    "model.depth": "int>=1|null",  # null: Table 2.1's value for model.size
    "model.hidden_size": "int>=1|null",
    "model.num_heads": "int>=1|null",
    "batch_size": "int>=1",
    "optim.lr": ">0",
    "optim.weight_decay": ">=0",
    "ema_decay": "[0,1]",
    "class_dropout_prob": "[0,1)",
    "checkpoint_every": "int>=0",
    "sample_every": "int>=0",
    "eval.every_n_steps": "int>=0",
    "eval.num_samples": "int>=1",
    "eval.batch_size": "int>=1",
    "eval.cfg_scale": ">=0",
    "eval.steps": "int>=1|null",
    "diffusion.sampling_steps": "int>=1|null",
}


#: Keys that only the evaluation during training reads (callbacks.EvalMetrics).
EVAL_KEYS = (
    *(f"eval.{k}" for k in ("every_n_steps", "num_samples", "batch_size", "sampler", "steps")),
    "eval.final_samplers",
    "metrics.cache_dir",
)


def check_samplers(cfg: DictConfig) -> None:
    """Refuse, before training, a sampler the evaluations could not run: ``diffusion.sampler``,
    ``eval.sampler`` and each of ``eval.final_samplers`` (``{sampler: [steps, ...]}``) must apply
    to the objective (``sampling.check_sampler``), with positive step counts."""
    from common.errors import require_positive_int
    from diffusion_transformer.sampling import check_sampler

    finals = cfg.eval.final_samplers or {}
    named = {"diffusion.sampler": cfg.diffusion.sampler, "eval.sampler": cfg.eval.sampler}
    named |= {f"eval.final_samplers.{k}": k for k in finals}
    for key, sampler in named.items():
        if sampler is None:
            continue
        try:
            check_sampler(cfg.diffusion, str(sampler))
        except ValueError as err:
            raise ValueError(f"{key}: {err}") from None
    for sampler, steps in finals.items():
        if not OmegaConf.is_list(steps) or not steps:
            raise ValueError(
                f"eval.final_samplers.{sampler}={steps} is not a list of step counts; pass e.g. "
                f"eval.final_samplers={{{sampler}:[8,25]}}"
            )
        for n in steps:
            require_positive_int(f"eval.final_samplers.{sampler}", n)


def refuse_ignored_keys(cfg: DictConfig) -> None:
    """Refuse keys this combination ignores (issue 28): ``eval.*`` without an evaluation,
    ``metrics.inception_weights`` without an Inception metric, ``data.vae`` in pixel space,
    ``tf32`` on the CPU, Gaussian-diffusion options of another variance or loss
    (``common.diffusion``), SDE options under an ODE sampler, ``repa.*`` without an encoder, and
    those of every training command
    (``common.cli.refuse_ignored_training_keys``)."""
    from common.cli import refuse_ignored_training_keys
    from common.metrics.evaluate import INCEPTION_METRICS

    unused: dict[str, tuple[str, str]] = {}
    callbacks, d = set(cfg.callbacks or {}), cfg.diffusion
    if "eval" not in callbacks:
        unused |= dict.fromkeys(
            EVAL_KEYS, ("these callbacks evaluate nothing", "pass callbacks=default")
        )
    elif cfg.eval.reference is None:
        why = f"eval.reference is null (data={cfg.data.name} sets none): training evaluates nothing"
        unused |= dict.fromkeys(EVAL_KEYS, (why, "pass eval.reference=<.npz or image folder>"))
    if cfg.eval.cfg_scale == 1:
        why = "eval.cfg_scale=1 does not guide"
        unused["eval.cfg_interval"] = (why, "pass eval.cfg_scale=<s> != 1")
    if not {"eval", "samples"} & callbacks:
        unused["sample_every"] = ("these callbacks write no samples", "pass callbacks=default")
    names = [str(n) for n in cfg.metrics.names]
    if not set(names) & set(INCEPTION_METRICS):
        why = f"metrics.names=[{','.join(names)}] has no Inception metric"
        unused["metrics.inception_weights"] = (why, f"add one of {', '.join(INCEPTION_METRICS)}")
    if cfg.data.channels != 4:
        why = f"data={cfg.data.name} trains in pixel space, with no VAE"
        unused["data.vae"] = (why, "use latents (data=imagenet_latents)")
    if cfg.trainer.get("accelerator") == "cpu":
        unused["tf32"] = ("trainer.accelerator=cpu runs no CUDA matmuls", "pass trainer=gpu")
    if d.objective == "ddpm" and d.learn_sigma:
        why = "learn_sigma=true learns the variance"
        unused["diffusion.sigma_small"] = (why, "pass diffusion.learn_sigma=false")
    rescale = "diffusion.rescale_learned_sigmas"
    if d.objective == "ddpm" and d.use_kl:
        unused[rescale] = ("use_kl=true trains the KL term alone", "pass diffusion.use_kl=false")
    elif d.objective == "ddpm" and not d.learn_sigma:
        unused[rescale] = ("learn_sigma=false has no KL term", "pass diffusion.learn_sigma=true")
    if d.objective == "transport" and not str(d.sampler).startswith("sde"):
        why = f"diffusion.sampler={d.sampler} is an ODE sampler"
        for key in ("diffusion_form", "last_step", "last_step_size"):
            unused[f"diffusion.{key}"] = (why, "pass diffusion.sampler=sde")
    if not cfg.repa.encoder:
        why = "repa=none aligns to no encoder"
        for key in ("weights", "coeff", "encoder_depth", "projector_hidden"):
            unused[f"repa.{key}"] = (why, "pick an encoder with repa=digits|dinov2_b|dinov2_l")
    refuse_ignored_training_keys(cfg, unused)


@hydra_main(
    "train",
    checks=CHECKS,
)
def main(cfg: DictConfig) -> None:
    from diffusion_transformer.training import train

    refuse_ignored_keys(cfg)
    check_samplers(cfg)
    train(cfg)


if __name__ == "__main__":
    # Call ``main`` through the imported module, not this ``__main__`` copy: submitit pickles the
    # task function by reference only when it lives in an importable module (by value it drags in
    # ``torch.backends.cudnn``, which cannot be pickled), so ``python -m ... -m`` sweeps launch.
    from diffusion_transformer.train import main as _main

    _main()
