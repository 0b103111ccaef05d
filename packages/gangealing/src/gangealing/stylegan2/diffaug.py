"""Differentiable augmentation (DiffAugment, Zhao et al. 2020) for GAN training on small datasets.

The StyleGAN2 generators that GANgealing aligns with (thesis Sec. 4.3, 4.4.2) are trained on large
datasets; when one is trained on a few hundred or thousand images instead, the discriminator
overfits. DiffAugment applies the same family of random, differentiable transforms to every image
the discriminator sees, real or generated, so that gradients flow through the augmentation to the
generator and the generator is not pushed to reproduce the augmentations.

Policies (comma separated, applied in the order given):

- ``color``: brightness ``x + U(-0.5, 0.5)``, saturation ``(x - mean_c) * U(0, 2) + mean_c``,
  contrast ``(x - mean) * U(0.5, 1.5) + mean``, one draw per image;
- ``translation``: integer shifts up to 1/8 of the size in x and y, filled with zeros (mid grey
  for images in [-1, 1]);
- ``cutout``: one zeroed square of half the size at a random position.

Every transform draws its parameters from an optional ``torch.Generator``, so calling
:func:`diff_augment` twice with generators in the same state applies the same transform.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

POLICIES: tuple[str, ...] = ("color", "translation", "cutout")


def _uniform(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """One U(0, 1) draw per image, shaped ``[N, 1, 1, 1]`` for broadcasting."""
    u = torch.rand(x.shape[0], 1, 1, 1, generator=generator, device=_rng_device(x, generator))
    return u.to(device=x.device, dtype=x.dtype)


def _rng_device(x: Tensor, generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else x.device


def rand_color(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Random brightness, saturation and contrast (DiffAugment's ``color`` policy)."""
    x = x + (_uniform(x, generator) - 0.5)
    mean_c = x.mean(dim=1, keepdim=True)
    x = (x - mean_c) * (_uniform(x, generator) * 2) + mean_c
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_uniform(x, generator) + 0.5) + mean


def rand_translation(
    x: Tensor, generator: torch.Generator | None = None, ratio: float = 0.125
) -> Tensor:
    """Shift each image by up to ``ratio`` of its size (integer pixels), filling with zeros."""
    n, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    device = _rng_device(x, generator)
    ty = torch.randint(-sh, sh + 1, (n, 1, 1), generator=generator, device=device).to(x.device)
    tx = torch.randint(-sw, sw + 1, (n, 1, 1), generator=generator, device=device).to(x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1) + ty  # source row of each output row
    cols = torch.arange(w, device=x.device).view(1, 1, w) + tx
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))  # index 0 and size+1 read zeros
    rows = (rows + 1).clamp(0, h + 1).expand(n, h, w)
    cols = (cols + 1).clamp(0, w + 1).expand(n, h, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1).expand(n, h, w)
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def rand_cutout(x: Tensor, generator: torch.Generator | None = None, ratio: float = 0.5) -> Tensor:
    """Zero one square of side ``ratio * size`` per image, centred anywhere in the image."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    device = _rng_device(x, generator)
    cy = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), generator=generator, device=device)
    cx = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), generator=generator, device=device)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside_y = (rows >= cy.to(x.device) - ch // 2) & (rows < cy.to(x.device) - ch // 2 + ch)
    inside_x = (cols >= cx.to(x.device) - cw // 2) & (cols < cx.to(x.device) - cw // 2 + cw)
    keep = ~(inside_y & inside_x)
    return x * keep.unsqueeze(1).to(x.dtype)


AUGMENTATIONS: dict[str, Callable[[Tensor, torch.Generator | None], Tensor]] = {
    "color": rand_color,
    "translation": rand_translation,
    "cutout": rand_cutout,
}


def parse_policy(policy: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"color,translation,cutout"`` or ``["color", ...]`` (None or "" for none) -> checked
    policy names."""
    if policy is None:
        return ()
    names = policy.split(",") if isinstance(policy, str) else list(policy)
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise ValueError(
            f"unknown DiffAugment policy {unknown}; use a comma-separated subset of "
            f"{','.join(POLICIES)} (on the command line augment=[color,translation,cutout]) or "
            "augment=null"
        )
    return tuple(names)


def diff_augment(
    x: Tensor,
    policy: str | Sequence[str] | None = "color,translation,cutout",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Apply the DiffAugment ``policy`` to a batch ``[N, C, H, W]``; the identity when empty.

    Apply it to both the real and the generated batch before the discriminator (and inside the
    R1 penalty, whose gradient is taken through it with respect to the un-augmented reals).
    """
    names = parse_policy(policy)
    for name in names:
        x = AUGMENTATIONS[name](x, generator)
    return x.contiguous() if names else x
