"""A trained GANgealing aligner applied to real images (thesis Sec. 4.4).

``congealer.pt`` (written by ``python -m gangealing.train``) holds the EMA Spatial Transformers,
the learned modes and the test-time configuration; the generator is not needed to align real
images. :class:`Congealer` loads it and aligns images of any size: the transformers see the
images at their training resolution and the warp samples the original pixels (one resampling),
at ``output_size``.
"""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from common.checkpoint import checkpoint_kind, safe_load
from gangealing.align.released import ReleasedCongealer, is_released
from gangealing.align.stn import STNOutput, check_rgb
from gangealing.align.target import TargetMode
from gangealing.align.transformers import build_transformer

FORMAT = "gangealing-congealer-v1"


class Congealer(nn.Module):
    """K Spatial Transformers T_k and the target modes c_k of a GANgealing run."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = dict(config)
        stn_cfg = dict(config.get("stn") or {})
        stn_cfg.setdefault("input_size", config["resolution"])
        self.resolution = int(config["resolution"])
        self.num_modes = int(config["num_modes"])
        stns = [
            build_transformer(config["transform"], self.resolution, stn_cfg)
            for _ in range(self.num_modes)
        ]
        for stn in stns:  # output at the size of the image sampled, not the training size
            for module in stn.modules():
                if hasattr(module, "output_size"):
                    module.output_size = None
        self.stns = nn.ModuleList(stns)
        self.classifier: nn.Module | None = None
        self.target = TargetMode(
            int(config["style_dim"]),
            int(config["num_components"]),
            num_modes=self.num_modes,
            cutoff=int(config["cutoff"]),
        )

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        map_location: str | torch.device = "cpu",
        preset: str | None = None,
    ) -> Congealer | ReleasedCongealer:
        """A congealer of this package (``congealer.pt`` or its run folder) or a released
        official model (``cat.pt``, ...; ``preset`` names its test settings, default: the file
        name's, see ``released.PRESETS``)."""
        path = Path(path)
        if path.is_dir():
            path = path / "congealer.pt"
        if not path.is_file():
            raise FileNotFoundError(
                f"no congealer at {path}: pass congealer=<run dir of python -m gangealing.train> "
                "or the congealer.pt file it wrote"
            )
        blob = safe_load(path, map_location=map_location)
        if is_released(blob):
            return ReleasedCongealer.from_checkpoint(blob, path, preset)
        if preset not in (None, "auto", "none"):
            raise ValueError(
                f"preset={preset} names a released model's test settings, but {path} is a "
                "congealer of this package; leave preset unset"
            )
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            kind = checkpoint_kind(blob, path)
            raise ValueError(
                f"{path} is {kind}, not a GANgealing congealer; pass the congealer.pt that "
                "python -m gangealing.train writes in its run directory (or that run directory)"
            )
        if blob["config"].get("transform") == "paper":
            return ReleasedCongealer.from_export(blob, path)
        congealer = cls(blob["config"])
        congealer.stns.load_state_dict(blob["stn"])
        congealer.target.load_state_dict(blob["target"])
        congealer.generator_info = dict(blob.get("generator") or {})
        if blob.get("classifier") is not None:
            from gangealing.align.classifier import ClusterClassifier

            record = blob["classifier"]
            congealer.classifier = ClusterClassifier(
                record["num_modes"], record["input_size"], record["widths"]
            )
            congealer.classifier.load_state_dict(record["state"])
        return congealer.eval()

    def forward(
        self,
        images: torch.Tensor,
        cluster: int | None = None,
        output_size: int | None = None,
        iters: int | None = None,
        flips: bool | None = None,
    ) -> STNOutput:
        """Congeal ``images [N, 3, H, W]``: the output is ``output_size`` square (default: the
        training resolution), sampled from the original pixels; ``grid`` maps it into ``images``
        in normalised coordinates, which do not depend on the images' resolution.

        With K > 1 modes pass ``cluster=k`` to use T_k (real images need a cluster assignment,
        Sec. 4.3.2). ``iters`` re-applies the similarity stage, ``flips`` also tries the mirrored
        image and keeps the smoother warp per image.
        """
        check_rgb(images)
        iters, flips = (1 if iters is None else iters), bool(flips)  # this package's defaults
        if cluster is None and self.num_modes > 1:
            if self.classifier is None:
                raise ValueError(
                    f"this congealer has {self.num_modes} modes (K > 1, Eq. 4.6): pass "
                    f"cluster=<0..{self.num_modes - 1}> to align with that mode's transformer, or "
                    "train its cluster classifier: python -m gangealing.cluster_classifier <run>"
                )
            clusters = self.classify(images)
            parts = {
                k: self(images[clusters == k], k, output_size, iters, flips)
                for k in clusters.unique().tolist()
            }
            return _merge(parts, clusters)
        cluster = 0 if cluster is None else cluster
        if flips and not self.stns[cluster].has_default_flip_cost:
            raise ValueError(
                "flips=true keeps, per image, the original or its mirror by the smoothness of the "
                "predicted flow (Sec. 4.3.1), but this congealer was trained with "
                f"transform={self.config.get('transform')!r} and predicts no flow: run with "
                "flips=false, or train with a flow stage (model=stn/paper, the default)"
            )
        size = output_size or self.resolution
        small = F.interpolate(images, size=(self.resolution,) * 2, mode="bilinear", antialias=True)
        source = images
        if tuple(images.shape[-2:]) != (size, size):
            source = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True)
        return self.stns[cluster](small, source, iters=iters, flips=flips)

    @torch.no_grad()
    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """Cluster of each image [N] from the classifier trained on generated images."""
        small = F.interpolate(images, size=(self.resolution,) * 2, mode="bilinear", antialias=True)
        return self.classifier(small).argmax(1)


def _merge(parts: dict[int, STNOutput], clusters: torch.Tensor) -> STNOutput:
    """Reassemble per-cluster outputs in the original image order."""
    merged = {}
    for field in fields(STNOutput):
        values = [getattr(parts[k], field.name) for k in parts]
        if any(v is None for v in values):
            merged[field.name] = None
            continue
        out = values[0].new_empty((clusters.shape[0], *values[0].shape[1:]))
        for k, value in zip(parts, values, strict=True):
            out[clusters == k] = value
        merged[field.name] = out
    return STNOutput(**merged)
