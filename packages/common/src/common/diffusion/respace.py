"""Timestep respacing: sample with fewer steps than the model was trained with.

A respaced process keeps a subset S of the original timesteps and recomputes betas from the
original ``abar`` at those steps (``beta_i = 1 - abar_{s_i} / abar_{s_{i-1}}``), so the marginals
``q(x_t | x_0)`` at the kept steps are unchanged. The model is always called with the *original*
timestep ``s_i``, never the respaced index ``i``.
"""

from __future__ import annotations

import numpy as np
import torch

from common.diffusion.gaussian import GaussianDiffusion


def space_timesteps(num_timesteps: int, section_counts) -> set[int]:
    """Choose which original timesteps to keep.

    ``section_counts`` is ADM's format: ``"250"`` (250 evenly strided steps), ``"10,15,20"`` (split
    the process into equal sections and take that many steps from each), ``"ddim50"`` (DDIM's
    integer stride, ``range(0, T, stride)`` with exactly 50 elements), or a list of ints.
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired = int(section_counts[len("ddim") :])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return set(range(0, num_timesteps, stride))
            raise ValueError(
                f"cannot take exactly {desired} steps of {num_timesteps} with a stride"
            )
        section_counts = [int(x) for x in section_counts.split(",")]
    size_per = num_timesteps // len(section_counts)
    extra = num_timesteps % len(section_counts)
    start_idx = 0
    all_steps: list[int] = []
    for i, section_count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < section_count:
            raise ValueError(f"cannot divide a section of {size} steps into {section_count}")
        frac_stride = 1 if section_count <= 1 else (size - 1) / (section_count - 1)
        cur_idx = 0.0
        for _ in range(section_count):
            all_steps.append(start_idx + round(cur_idx))
            cur_idx += frac_stride
        start_idx += size
    return set(all_steps)


class _WrappedModel:
    """Calls the model with original timesteps: ``model(x, timestep_map[t], **kwargs)``."""

    def __init__(self, model, timestep_map: torch.Tensor) -> None:
        self.model = model
        self.timestep_map = timestep_map
        self._on_device: dict[torch.device, torch.Tensor] = {}

    def __call__(self, x, ts, **kwargs):
        table = self._on_device.get(ts.device)
        if table is None:
            table = self._on_device[ts.device] = self.timestep_map.to(ts.device)
        return self.model(x, table[ts].to(ts.dtype), **kwargs)


class SpacedDiffusion(GaussianDiffusion):
    """A diffusion process that keeps only ``use_timesteps`` of a base process."""

    def __init__(self, use_timesteps, **kwargs) -> None:
        self.use_timesteps = set(use_timesteps)
        self.original_num_steps = len(kwargs["betas"])
        base = GaussianDiffusion(**kwargs)
        last_alpha_cumprod = 1.0
        new_betas, timestep_map = [], []
        for i, alpha_cumprod in enumerate(base.alphas_cumprod):
            if i in self.use_timesteps:
                new_betas.append(1 - alpha_cumprod / last_alpha_cumprod)
                last_alpha_cumprod = alpha_cumprod
                timestep_map.append(i)
        self.timestep_map = torch.tensor(timestep_map, dtype=torch.long)
        kwargs["betas"] = np.array(new_betas)
        super().__init__(**kwargs)

    def _wrap_model(self, model):
        if isinstance(model, _WrappedModel):
            return model
        return _WrappedModel(model, self.timestep_map)

    def p_mean_variance(self, model, *args, **kwargs):
        return super().p_mean_variance(self._wrap_model(model), *args, **kwargs)

    def training_losses(self, model, *args, **kwargs):
        return super().training_losses(self._wrap_model(model), *args, **kwargs)

    def condition_mean(self, cond_fn, *args, **kwargs):
        return super().condition_mean(self._wrap_model(cond_fn), *args, **kwargs)

    def condition_score(self, cond_fn, *args, **kwargs):
        return super().condition_score(self._wrap_model(cond_fn), *args, **kwargs)
