"""A GANgealing aligner of real images (thesis Sec. 4.4): a run of this package or a released model.

:class:`Congealer` holds the K Spatial Transformers T_k, the test-time settings (padding,
similarity iterations, flip inference), the cluster classifier of K-mode models and, when the
file has them, the learned target mode c_k (Eq. 4.4) with the generator G that renders it: the
target image G(c_k) is what the congealed images are aligned to (the official training visuals'
"truncated" samples at psi = 0).

``Congealer.load`` reads the two kinds of file: ``congealer.pt`` written by
``python -m gangealing.train`` (``FORMAT``: the ``model`` config that builds T, its EMA weights,
the target mode and G) and the released official files (``released``: ``t_ema``, ``ll``,
``g_ema``, ``args``). Images of any size are resized to the transformer's input size; the
congealed output is ``output_size`` square (default: the training resolution).
"""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from common.checkpoint import checkpoint_kind, safe_load, wrong_kind
from gangealing.align.classifier import ClusterClassifier, trunk_widths
from gangealing.align.official_stn import OfficialClusterClassifier, OfficialComposedSTN, unmirror
from gangealing.align.released import is_released, official_classifier_for, released_parts
from gangealing.align.stn import STNOutput, check_rgb
from gangealing.align.target import TargetMode, target_from_state
from gangealing.align.transformers import SmallTransformers, build_transformers
from gangealing.stylegan2.networks import Generator, generator_from_state

FORMAT = "gangealing-congealer-v1"


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if tuple(images.shape[-2:]) == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True)


class Congealer(nn.Module):
    """K Spatial Transformers, their test-time settings and, where known, the target modes.

    ``stn``: an ``OfficialComposedSTN`` (K heads on one trunk; the released models and
    ``model=stn/paper``) or ``SmallTransformers`` (one network per mode). ``size``: the training
    resolution (the official ``flow_size``). ``settings``: ``padding_mode``, ``iters``, ``flips``
    (the defaults of :meth:`forward`). ``model``: the config that builds ``stn`` (None for
    released files, whose architecture is read from their tensors).
    """

    def __init__(
        self,
        stn: OfficialComposedSTN | SmallTransformers,
        size: int,
        settings: dict[str, Any],
        classifier: nn.Module | None = None,
        target: TargetMode | None = None,
        generator: Generator | None = None,
        model: dict[str, Any] | None = None,
        preset: str | None = None,
    ) -> None:
        super().__init__()
        self.stn, self.classifier, self.target, self.generator = stn, classifier, target, generator
        self.size, self.settings, self.model, self.preset = int(size), dict(settings), model, preset
        self.num_modes = int(stn.num_heads)
        self.official = isinstance(stn, OfficialComposedSTN)
        # the official STN takes its training input size (official real_size); ours the resolution
        self.input_size = int(stn.supersize) if self.official else self.size
        self.generator_info: dict[str, Any] = {}

    # ------------------------------------------------------------------ files
    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        map_location: str | torch.device = "cpu",
        preset: str | None = None,
    ) -> Congealer:
        """A congealer of this package (``congealer.pt`` or its run folder) or a released
        official model (``cat.pt``, ...; ``preset`` names its test settings, default: the file
        name's, see ``released.PRESETS``)."""
        path = Path(path)
        if path.is_dir():
            path = path / "congealer.pt"
        if not path.is_file():
            raise FileNotFoundError(
                f"no congealer at {path}: pass ckpt=<run dir of python -m gangealing.train> "
                "or the congealer.pt file it wrote"
            )
        blob = safe_load(path, map_location=map_location)
        if is_released(blob):
            return cls(**released_parts(blob, path, preset)).eval()
        if preset not in (None, "auto", "none"):
            raise ValueError(
                f"preset={preset} names a released model's test settings, but {path} is a "
                "congealer of this package; leave preset unset"
            )
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise ValueError(wrong_kind(path, checkpoint_kind(blob, path), "a congealer"))
        config = blob["config"]
        stn = build_transformers(config["model"])
        stn.load_state_dict(blob["stn"], strict=True)
        settings = {k: config[k] for k in ("padding_mode", "iters", "flips")}
        congealer = cls(
            stn,
            config["size"],
            settings,
            classifier=_read_classifier(blob.get("classifier"), stn),
            target=target_from_state(blob["target"], config["cutoff"]),
            generator=generator_from_state(blob["g_ema"], f"{path}['g_ema']"),
            model=dict(config["model"]),
        )
        congealer.generator_info = dict(blob.get("generator") or {})
        return congealer.eval()

    def export(self) -> dict[str, Any]:
        """The ``congealer.pt`` of this package (module docstring), on the CPU."""
        if self.model is None or self.target is None or self.generator is None:
            raise ValueError("a released model is its own file; pass that file as ckpt=")

        def cpu(module: nn.Module) -> dict[str, torch.Tensor]:
            return {k: v.detach().cpu() for k, v in module.state_dict().items()}

        record = None
        if isinstance(self.classifier, OfficialClusterClassifier):
            record = {"kind": "official", "state": cpu(self.classifier)}
        elif self.classifier is not None:
            record = {"widths": trunk_widths(self.classifier.trunk), "state": cpu(self.classifier)}
        config = {"model": self.model, "size": self.size, "cutoff": self.target.cutoff}
        return {
            "format": FORMAT,
            "config": {**config, **self.settings},
            "stn": cpu(self.stn),
            "target": cpu(self.target),
            "g_ema": cpu(self.generator),
            "classifier": record,
            "generator": self.generator_info,
        }

    # ------------------------------------------------------------------ the target mode
    @torch.no_grad()
    def target_images(self) -> torch.Tensor | None:
        """G(c_k) for the K target modes [K, 3, S, S] at the generator's resolution (W space:
        c_k feeds every layer; the generator's stored noise), or None when the file has no
        target mode (a released file without ``ll`` and ``g_ema``)."""
        if self.target is None or self.generator is None:
            return None
        images, _ = self.generator(
            [self.target.modes()], input_is_latent=True, randomize_noise=False
        )
        return images

    # ------------------------------------------------------------------ alignment
    def forward(
        self,
        images: torch.Tensor,
        cluster: int | None = None,
        output_size: int | None = None,
        iters: int | None = None,
        flips: bool | None = None,
    ) -> STNOutput:
        """Congeal ``images [N, 3, H, W]``: the output is ``output_size`` square (default: the
        training resolution); ``grid`` maps it into the input in normalised coordinates, which do
        not depend on the images' resolution.

        ``iters`` (the similarity stage re-applied to its own output) and ``flips`` (also try the
        mirror, keep the smoother residual flow) default to :attr:`settings`. With K > 1 modes
        the cluster classifier picks each image's mode (and, for the official one, its mirror);
        ``cluster=k`` fixes the mode (real images need one, Sec. 4.3.2).
        """
        check_rgb(images)
        if cluster is None and self.num_modes > 1 and self.classifier is None:
            raise ValueError(
                f"this congealer has {self.num_modes} modes (K > 1, Eq. 4.6) and no cluster "
                f"classifier: pass cluster=<0..{self.num_modes - 1}> to align with that mode, or "
                "train its classifier: python -m gangealing.cluster_classifier ckpt=<run>"
            )
        iters = self.settings["iters"] if iters is None else iters
        if flips is None and self.num_modes == 1:
            flips = self.settings["flips"] and self.stn.predicts_flow
        size = output_size or self.size
        if self.official:
            return self._official(_resize(images, self.input_size), cluster, size, iters, flips)
        if cluster is None and self.num_modes > 1:
            clusters = self.classify(images)
            parts = {
                k: self(images[clusters == k], k, output_size, iters, flips)
                for k in clusters.unique().tolist()
            }
            return _merge(parts, clusters)
        if flips and not self.stn.predicts_flow:
            raise ValueError(
                "flips=true keeps, per image, the original or its mirror by the smoothness of the "
                "predicted flow (Sec. 4.3.1), but this congealer was trained with "
                f"transform={self.stn.transform!r} and predicts no flow: run with flips=false, "
                "or train with a flow stage (model=stn/paper, the default)"
            )
        small = _resize(images, self.input_size)
        return self.stn[cluster or 0](small, _resize(images, size), iters=iters, flips=bool(flips))

    def _official(self, x, cluster, size, iters, flips) -> STNOutput:
        """The released models' test-time path (official ``applications``: ``determine_flips``,
        then the K-head T on the chosen head and mirror)."""
        padding_mode = self.settings["padding_mode"]
        if self.num_modes == 1:
            return self.stn.congeal(
                x, output_size=size, iters=iters, flips=flips, padding_mode=padding_mode, cluster=0
            )
        if self.classifier is not None and flips is not False:
            clusters, mirrored = self.classifier.assign(x, cluster)
        else:
            clusters = torch.full((x.shape[0],), int(cluster), device=x.device)
            mirrored = torch.zeros_like(clusters, dtype=torch.bool)
        x = torch.where(mirrored.view(-1, 1, 1, 1), x.flip(-1), x)
        out = self.stn.congeal(
            x, output_size=size, iters=iters, padding_mode=padding_mode, cluster=clusters
        )
        out = unmirror(out, mirrored)
        out.flipped = mirrored
        return out

    @torch.no_grad()
    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """Cluster of each image [N] from the classifier trained on generated images (the
        official one folds the mirror in)."""
        if self.classifier is None:
            raise ValueError(
                "this congealer has no cluster classifier; train one with "
                "python -m gangealing.cluster_classifier ckpt=<run>"
            )
        x = _resize(images, self.input_size)
        if self.official:
            return self.classifier.assign(x)[0]
        return self.classifier(x).argmax(1)


def _read_classifier(record: dict[str, Any] | None, stn: nn.Module) -> nn.Module | None:
    """The cluster classifier stored by ``python -m gangealing.cluster_classifier``."""
    if record is None:
        return None
    if isinstance(stn, OfficialComposedSTN):
        classifier = official_classifier_for(stn)
    else:
        classifier = ClusterClassifier(stn.num_heads, stn.input_size, record["widths"])
    classifier.load_state_dict(record["state"], strict=True)
    return classifier


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
