"""Device selection shared by every command: ``device=auto`` is the GPU when there is one."""

from __future__ import annotations

import torch


def pick_device(name: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (or None): ``cuda`` when available, else ``cpu``; otherwise the named device,
    refused with what to pass when torch does not know it or it is not on this machine."""
    if isinstance(name, torch.device):
        return name
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={name!r} is not a device; pass auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name} but this machine has no CUDA GPU; pass device=cpu or auto")
    return device
