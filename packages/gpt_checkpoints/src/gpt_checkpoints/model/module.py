"""The G.pt LightningModule: pre-training from checkpoints (thesis Algorithm 2, Sec. 3.2.2, 3.3).

Each step draws pairs ``(theta, theta*, l, l*)`` from the same runs, applies one random
permutation augmentation to both members of a pair (Sec. 3.2.1), normalises parameters
(Sec. 3.3) and metrics, noises theta* to a uniform diffusion step j and regresses the clean theta*
(signal prediction, fixed variances, linear schedule; the loss of Eq. 3.1). AdamW, an EMA of the
weights, and DDPM sampling (Sec. 3.2.2) or DDIM as a faster option.
Everything needed to use a trained model (task, layout, normalisation, metric range) is in its
hyper-parameters, so ``load_gpt(path)`` restores a working model from the file alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch

from common.checkpoint import build_model, checkpoint_kind, plain_container, safe_load, wrong_kind
from common.diffusion import create_diffusion
from common.training import step_seed
from common.training.ema import EMA
from gpt_checkpoints.dataset.datamodule import MetricNormalizer, ParameterNormalizer
from gpt_checkpoints.model.official import (
    PRESETS,
    build_splits,
    infer_config,
    preset_architecture,
    split_for,
)
from gpt_checkpoints.params.layout import ParamLayout
from gpt_checkpoints.params.permutation import permute_pair
from gpt_checkpoints.tasks import task_from_recipe, task_network, task_permutation_groups
from gpt_checkpoints.tasks.base import Task

#: The networks a ``model`` config (or a trained file's copy of it) may name.
NETWORKS = (
    "gpt_checkpoints.model.gpt.Gpt",
    "gpt_checkpoints.model.official.OfficialGpt.from_preset",
)


class GptModule(L.LightningModule):
    """G.pt and its training (Algorithm 2). ``model`` is the ``model`` config group: a
    ``_target_`` (``model.gpt.Gpt``, or ``model.official.OfficialGpt.from_preset``) and its
    arguments, built here by ``hydra.utils.instantiate`` with the task network's ``param_shapes``
    and ``permutation_groups``; ``diffusion`` holds the keys of ``conf/diffusion/ddpm.yaml``.

    What only the checkpoint dataset knows comes at run time (``model.training``): ``layout`` and
    ``permutation_groups`` (the task network, from the dataset's manifest), ``task`` (its name,
    data root and the recipe the runs were collected with), ``metric_range`` and ``layer_scales``
    (fitted on the training split, or the released preset's ``openai_coeff``). ``optim`` is
    ``None`` for a model that is only sampled (a released file).
    """

    def __init__(
        self,
        model: dict[str, Any],
        layout: list,
        permutation_groups: list,
        task: dict[str, Any],
        metric: str,
        metric_range: list[float],
        layer_scales: list[float],
        diffusion: dict[str, Any],
        optim: dict[str, Any] | None,
        ema_decay: float,
        augment: bool,
        seed: int,
        protocol: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layout = ParamLayout.from_list(layout)
        self.groups = [(int(s), tuple((n, int(a)) for n, a in m)) for s, m in permutation_groups]
        self.model = build_model(model, NETWORKS, self.layout.entries, self.groups)
        self.ema = EMA(self.model, decay=ema_decay)
        self.normalizer = ParameterNormalizer(self.layout, layer_scales)
        self.metric_normalizer = MetricNormalizer(
            *metric_range, name=metric, encoding=self.model.metric_encoding
        )
        # The released models' prompting protocol (official Gpt/tasks.py, configs/test):
        # best_prompt, recursive_prompt, prompt_start_coeff, minimize; None for this package's.
        self.protocol = dict(protocol or {})
        if diffusion["objective"] != "ddpm":  # Sec. 3.2.2: Gaussian diffusion only
            raise ValueError(
                f"diffusion.objective={diffusion['objective']!r} is not available for G.pt; "
                "it is trained with Gaussian diffusion: diffusion=ddpm"
            )
        self.diffusion_cfg = dict(diffusion)
        self.process = self.build_diffusion(None)
        self.optim_cfg = optim
        self.augment, self.seed = augment, seed

    def build_diffusion(self, respacing: str | None):
        d = self.diffusion_cfg
        return create_diffusion(
            respacing or "",
            noise_schedule=d["noise_schedule"],
            predict_xstart=True,  # signal prediction (Sec. 3.2.2)
            learn_sigma=False,
            sigma_small=d["sigma_small"],
            diffusion_steps=d["diffusion_steps"],
        )

    def configure_optimizers(self):
        cfg = self.optim_cfg
        if cfg is None:
            raise ValueError("this G.pt was loaded for sampling (no optim settings); train one")
        # No decay on biases, LayerNorm weights and positional embeddings (official
        # GPT.configure_optimizers; pos_embed here, decoder.pos_emb in the released network).
        decay = [p for n, p in self.model.named_parameters() if p.ndim >= 2 and "pos_emb" not in n]
        no_decay = [p for n, p in self.model.named_parameters() if p.ndim < 2 or "pos_emb" in n]
        opt = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": cfg["weight_decay"]},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=cfg["lr"],
            betas=tuple(cfg["betas"]),
        )
        warmup = int(cfg.get("warmup_steps") or 0)
        if not warmup:
            return opt
        ramp = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": ramp, "interval": "step"}}

    # ------------------------------------------------------------------ training
    def model_inputs(self, theta, loss, loss_target) -> dict[str, torch.Tensor]:
        return {
            "theta": self.normalizer.normalize(theta),
            "loss": self.metric_normalizer.normalize(loss),
            "loss_target": self.metric_normalizer.normalize(loss_target),
        }

    def diffusion_loss(self, batch: dict[str, torch.Tensor], augment: bool) -> torch.Tensor:
        theta, theta_star = batch["theta"], batch["theta_star"]
        if augment and self.groups:
            theta, theta_star = permute_pair([theta, theta_star], self.layout, self.groups)
        x0 = self.normalizer.normalize(theta_star)
        t = self.process.sample_timesteps(x0.shape[0], x0.device)
        kwargs = self.model_inputs(theta, batch["loss"], batch["loss_target"])
        return self.process.training_losses(self.model, x0, t, kwargs)["loss"].mean()

    def training_step(self, batch, batch_idx: int):
        torch.manual_seed(step_seed(self.seed, self.global_step, self.global_rank))
        loss = self.diffusion_loss(batch, self.augment)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx: int):
        torch.manual_seed(step_seed(self.seed + 1, batch_idx))
        self.log("val/loss", self.diffusion_loss(batch, augment=False), prog_bar=True)

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        self.ema.update(self.model)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["hyper_parameters"] = plain_container(dict(self.hparams))

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def generate(
        self,
        theta: torch.Tensor,
        loss: torch.Tensor | float,
        loss_target: torch.Tensor | float,
        sampler: str | None = None,
        steps: int | None = None,
        use_ema: bool = True,
        generator: torch.Generator | None = None,
        check_prompt: bool = True,
    ) -> torch.Tensor:
        """Sample updated parameters theta* ``[N, P]`` for inputs theta, their metric and a
        prompted metric (Sec. 3.2.2: start from noise as theta*, denoise with DDPM)."""
        self.layout.check_flat(theta)
        n = theta.shape[0]
        device = self.pos_device
        theta = theta.to(device).float()
        loss = torch.as_tensor(loss, dtype=torch.float32, device=device).expand(n)
        loss_target = torch.as_tensor(loss_target, dtype=torch.float32, device=device).expand(n)
        if check_prompt:
            self.metric_normalizer.check_prompt(loss_target)
        sampler = sampler or self.diffusion_cfg["sampler"]
        steps = steps or self.diffusion_cfg["sampling_steps"]
        net = self.ema.module if use_ema else self.model
        was_training = net.training
        net.eval()
        kwargs = self.model_inputs(theta, loss, loss_target)
        shape = (n, self.layout.num_params)
        if sampler not in ("ddpm", "ddim"):
            raise ValueError(f"unknown sampler {sampler!r}; choose ddpm or ddim")
        if sampler == "ddpm":
            process = self.build_diffusion(str(steps) if steps else None)
            loop = process.p_sample_loop
        else:
            process = self.build_diffusion(f"ddim{steps or 50}")
            loop = process.ddim_sample_loop
        out = loop(
            net, shape, clip_denoised=False, model_kwargs=kwargs, device=device, generator=generator
        )
        net.train(was_training)
        return self.normalizer.denormalize(out)

    @property
    def pos_device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ export
    def export(self, path: str | Path) -> Path:
        """Write the EMA weights and the hyper-parameters to one safetensors file."""
        from safetensors.torch import save

        from common.checkpoint import atomic_write_bytes

        state = {k: v.contiguous().cpu() for k, v in self.ema.module.state_dict().items()}
        hparams = json.dumps(plain_container(dict(self.hparams)))
        meta = {"hyper_parameters": hparams, "format": "gpt/1"}
        atomic_write_bytes(save(state, metadata=meta), path)
        return Path(path)


#: What ``load_gpt`` takes (the end of its wrong-kind error).
_ACCEPTS = "the gpt.safetensors, last.ckpt or run folder of python -m gpt_checkpoints.train"


def load_gpt(path: str | Path, map_location: str = "cpu", preset: str | None = None) -> GptModule:
    """A trained G.pt from a Lightning ``.ckpt`` (EMA and raw weights), an exported
    ``.safetensors`` file (EMA weights) or a released file (``mnist_loss.pt``: ``G``,
    ``G_ema``; ``preset`` names its configuration when the file name does not); none is
    unpickled."""
    path = Path(path)
    if path.is_dir():
        export = path / "gpt.safetensors"
        path = export if export.is_file() else path / "checkpoints" / "last.ckpt"
    own = f"{path} records its configuration; preset= names a released file's, drop it"
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        if not path.is_file():
            raise FileNotFoundError(f"G.pt weights not found: {path}")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if "hyper_parameters" not in meta and meta.get("format", "").startswith("gpt/"):
            raise ValueError(
                f"{path.name} is a G.pt export without its configuration (no hyper_parameters "
                "metadata: damaged, or written by other code); pass its run folder or last.ckpt"
            )
        if "hyper_parameters" not in meta:
            kind = checkpoint_kind(safe_load(path), path)
            raise ValueError(wrong_kind(path, kind, "a G.pt export", _ACCEPTS))
        if preset:
            raise ValueError(own)
        module = GptModule(**json.loads(meta["hyper_parameters"]))
        state = safe_load(path, map_location)
        module.model.load_state_dict(state)
        module.ema.module.load_state_dict(state)
        return module.eval()
    ckpt = safe_load(path, map_location)
    kind = checkpoint_kind(ckpt, path)
    if kind.startswith("an official G.pt checkpoint"):
        return load_released(ckpt, path, preset)
    if not kind.startswith("a G.pt training checkpoint"):
        raise ValueError(wrong_kind(path, kind, "a G.pt checkpoint", _ACCEPTS))
    if preset:
        raise ValueError(own)
    module = GptModule(**ckpt["hyper_parameters"])
    module.load_state_dict(ckpt["state_dict"])
    return module.eval()


#: The ``model`` config of a released network (``conf/model/<preset>.yaml``).
OFFICIAL_TARGET = NETWORKS[1]
#: The released models' diffusion (official main.py: 1000 linear-beta steps, fixed large variance).
OFFICIAL_DIFFUSION = {
    "objective": "ddpm",
    "noise_schedule": "linear",
    "diffusion_steps": 1000,
    "sigma_small": False,
    "sampler": "ddpm",
    "sampling_steps": None,
}


def load_released(ckpt: dict[str, Any], path: str | Path, preset: str | None = None) -> GptModule:
    """A released G.pt (``{'G', 'G_ema', 'optim'}``, e.g. ``mnist_loss.pt``) as a ``GptModule``:
    the configuration comes from ``preset`` (default: the file's name), is checked against the
    tensor shapes, and ``G``/``G_ema`` load strictly into the model and its EMA."""

    name = preset or Path(path).stem
    if name not in PRESETS:
        raise ValueError(
            f"{path} is a released G.pt file, which holds no configuration; pass the preset it "
            f"was trained with: preset=<{'|'.join(PRESETS)}> (the name of its official file)"
        )
    spec = PRESETS[name]
    layout = ParamLayout.from_module(task_network(spec["task"]))
    state = ckpt["G"]
    found, wanted = infer_config(state), preset_architecture(name)
    split = split_for(layout.sizes, found["output_splits"])
    for key, value in found.items():
        if key in wanted and wanted[key] != value:
            raise ValueError(
                f"{path} has {key}={value}, the {name} preset {wanted[key]}: it is not the "
                f"released {name} model; pass the preset it was trained with (preset=...)"
            )
    if build_network_splits(layout, wanted) != found["output_splits"]:
        raise ValueError(
            f"{path} tokenises the {spec['task']} network as {split}, the {name} preset as "
            f"split_policy={wanted['split_policy']}, chunk_size={wanted['chunk_size']}"
        )
    module = GptModule(
        model={"_target_": OFFICIAL_TARGET, "preset": name},
        layout=layout.to_list(),
        permutation_groups=[list(g) for g in task_permutation_groups(spec["task"])],
        task={"name": spec["task"], "data_root": None, "recipe": None},
        metric=spec["metric"],
        metric_range=[float("-inf"), float("inf")],
        layer_scales=[spec["openai_coeff"]] * len(layout.entries),
        diffusion=OFFICIAL_DIFFUSION,
        optim=None,  # sampling only
        ema_decay=0.999,
        augment=True,
        seed=0,
        protocol={k: spec[k] for k in ("best_prompt", "recursive_prompt", "prompt_start_coeff",
                                       "minimize")},
    )  # fmt: skip
    module.model.load_state_dict(state, strict=True)
    module.ema.module.load_state_dict(ckpt.get("G_ema", state), strict=True)
    return module.eval()


def build_network_splits(layout: ParamLayout, architecture: dict[str, Any]) -> list[int]:

    return build_splits(layout.sizes, architecture["split_policy"], architecture["chunk_size"])


def load_task(module: GptModule, data_root: str | None = None) -> Task:
    """The task a G.pt was trained on, rebuilt from the recipe it recorded; ``data_root``
    (``data.root=``) replaces the recorded MNIST/CIFAR-10 root when the data moved."""
    spec = module.hparams["task"]
    if module.protocol and spec["name"] == "cartpole":
        raise ValueError(
            "the released cartpole.pt trains Isaac Gym's continuous Cartpole (GPU simulator), "
            "which this package does not emulate; its network loads (load_gpt), but prompting "
            "it here needs that environment. The package's own Cartpole task is discrete"
        )
    task = task_from_recipe(spec["name"], data_root or spec.get("data_root"), spec.get("recipe"))
    if task.layout.to_list() != module.layout.to_list():
        raise ValueError(
            f"G.pt was trained on a {module.layout.describe()} network but task {task.name} builds "
            f"{task.layout.describe()}"
        )
    return task
