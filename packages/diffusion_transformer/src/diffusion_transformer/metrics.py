"""Scoring DiT samples (thesis Sec. 2.5): read the samples, resolve the reference, compute the
``common.metrics`` metrics and write ``metrics.json``. Used by ``python -m
diffusion_transformer.evaluate`` and by the evaluation during training (``callbacks.EvalMetrics``).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from common.checkpoint import write_json
from common.devices import pick_device

REFERENCES = ("digits",)


def resolve_reference(reference: str | None, image_size: int = 8) -> Any:
    """Named references -> uint8 ``[N, H, W, 3]`` images; paths are passed on to
    ``common.metrics`` (which reads ``.npz`` statistics, ``.npz`` images and folders).

    ``digits`` is rendered at ``image_size``, the resolution of the samples, exactly as the
    training data are (``common.data.digits.load_digits``): the metric's resize back to 8x8 is then
    applied to real and generated images alike. Comparing 16x16 samples with 8x8 originals would
    not be: bilinear up- then down-sampling blurs, and real 16x16 digits would score fd_digits 363.
    """
    if not reference:
        raise ValueError(
            "no reference set: pass reference=digits, reference=<stats .npz with mu and sigma>, "
            "reference=<.npz of images> or reference=<image folder>"
        )
    if reference == "digits":
        from common.data.digits import load_digits
        from common.data.images import to_uint8

        images, _ = load_digits(image_size)
        return to_uint8(images)
    path = Path(str(reference)).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"reference {path} does not exist: pass one of {REFERENCES}, an .npz (images or "
            "mu/sigma statistics) or an image folder"
        )
    return path


def load_samples(samples: str | None) -> tuple[Any, np.ndarray | None]:
    """``.npz`` (``arr_0`` and optional ``labels``) -> (images, labels); folders pass through."""
    if not samples:
        raise ValueError("set samples=<.npz written by diffusion_transformer.sample or a folder>")
    path = Path(str(samples)).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"samples {path} do not exist")
    if path.suffix == ".npz":
        try:
            with np.load(path) as data:
                if "arr_0" not in data:
                    raise ValueError(
                        f"{path} has no arr_0: expected ADM's format (uint8 N x H x W x 3)"
                    )
                labels, images = data.get("labels", None), data["arr_0"]
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            raise ValueError(
                f"{path} is not a readable .npz archive ({err}); pass the samples.npz that "
                "diffusion_transformer.sample writes"
            ) from None
        if images.ndim != 4 or len(images) == 0:
            raise ValueError(
                f"{path} holds arr_0 of shape {images.shape}, not a batch of images "
                "(N x H x W x C, N >= 1); pass the samples.npz that diffusion_transformer.sample "
                "writes"
            )
        return images, labels
    return path, None


def refuse_ignored_keys(cfg: DictConfig) -> bool:
    """Refuse ``metrics.inception_weights`` without an Inception metric, ``metrics.cache_dir``
    with nothing to cache and ``reference`` when no metric compares with one (issue 28); returns
    whether a reference is needed."""
    from common.metrics.evaluate import INCEPTION_METRICS, NO_REFERENCE

    names = [str(m) for m in cfg.metrics.names]
    if cfg.metrics.inception_weights and not set(names) & set(INCEPTION_METRICS):
        raise ValueError(
            f"metrics.inception_weights={cfg.metrics.inception_weights} is ignored because "
            f"metrics.names=[{','.join(names)}] has no Inception metric; drop it, or add one of "
            f"{', '.join(INCEPTION_METRICS)}"
        )
    digits = any(m.endswith("_digits") for m in names)  # the digits space is cached
    if cfg.metrics.cache_dir and not digits and cfg.reference in (None, "digits"):
        raise ValueError(
            f"metrics.cache_dir={cfg.metrics.cache_dir} is ignored because neither the digits "
            "space nor a reference file is read; drop it, or pass reference=<.npz or folder>"
        )
    needed = not names or not set(names) <= set(NO_REFERENCE)
    if cfg.reference and not needed:
        raise ValueError(
            f"reference={cfg.reference} is ignored because metrics.names=[{','.join(names)}] "
            "compare with no reference; drop it, or add a metric that does (e.g. fid, fd_digits)"
        )
    return needed


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """The job of ``python -m diffusion_transformer.evaluate`` (``conf/evaluate.yaml``)."""
    from common.metrics import evaluate_images
    from common.metrics.inputs import iter_image_batches

    needs_reference = refuse_ignored_keys(cfg)
    device = pick_device(cfg.device)
    images, labels = load_samples(cfg.samples)
    first = next(iter_image_batches(images, batch_size=1), None)  # arrays, .npz and folders
    if first is None:
        raise ValueError(f"no images in {cfg.samples}; pass a folder or .npz that holds images")
    size = first.shape[1]
    reference = resolve_reference(cfg.reference, image_size=size) if needs_reference else None
    values = evaluate_images(
        images,
        reference,
        list(cfg.metrics.names),
        labels=labels,
        inception_weights=cfg.metrics.inception_weights,
        batch_size=cfg.batch_size,
        device=device,
        cache_dir=cfg.metrics.cache_dir,
    )
    values = {k: float(v) for k, v in values.items()}
    out = Path(cfg.out) / "metrics.json"
    record = {"samples": str(cfg.samples), "reference": str(cfg.reference), **values}
    write_json(record, out)
    for name, value in values.items():
        print(f"{name:>16s}  {value:.4f}")
    print(f"metrics json : {out}")
    return values
