"""Score samples against a reference: ``python -m diffusion_transformer.evaluate``.

    python -m diffusion_transformer.evaluate \\
        samples=outputs/diffusion_transformer/sample/<run>/samples.npz \\
        reference=VIRTUAL_imagenet256_labeled.npz metrics.names=[fid,is,precision,recall] \\
        metrics.inception_weights=/models/weights-inception-2015-12-05-6726825d.pth
    python -m diffusion_transformer.evaluate samples=<npz> reference=digits \\
        metrics.names=[fd_digits,acc_digits]       # offline, digits feature space

``samples``: our ``.npz`` (``arr_0`` uint8 [N, H, W, 3], optional ``labels``) or an image folder.
``reference``: ``digits`` (scikit-learn's real digits), an ``.npz`` of images or of precomputed
statistics (``mu``, ``sigma``), or an image folder; statistics of image references are cached.
Thesis Sec. 2.5 reports FID-50K, sFID, Inception Score, precision and recall.
Writes ``metrics.json`` in the output directory and prints it.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from common.checkpoint import atomic_write_bytes
from common.cli import hydra_main
from common.devices import pick_device

REFERENCES = ("digits",)


def resolve_reference(reference: str | None, image_size: int = 8) -> Any:
    """Named references -> uint8 ``[N, H, W, 3]`` images; paths are passed on to
    ``common.metrics`` (which reads ``.npz`` statistics, ``.npz`` images and folders).

    ``digits`` is rendered at ``image_size``, the resolution of the samples, exactly as the
    training data are (``load_digits_tensors``): the metric's resize back to 8x8 is then applied to
    real and generated images alike. Comparing 16x16 samples with 8x8 originals would not be:
    bilinear up- then down-sampling blurs, and real 16x16 digits would score fd_digits 363.
    """
    if not reference:
        raise ValueError(
            "no reference set: pass reference=digits, reference=<stats .npz with mu and sigma>, "
            "reference=<.npz of images> or reference=<image folder>"
        )
    if reference == "digits":
        from common.data.images import to_uint8
        from diffusion_transformer.data import load_digits_tensors

        images, _ = load_digits_tensors(image_size)
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


def evaluate(cfg: DictConfig) -> dict[str, float]:
    from common.metrics import evaluate_images
    from common.metrics.inputs import iter_image_batches

    images, labels = load_samples(cfg.samples)
    first = next(iter_image_batches(images, batch_size=1), None)  # arrays, .npz and folders
    if first is None:
        raise ValueError(f"no images in {cfg.samples}; pass a folder or .npz that holds images")
    size = first.shape[1]
    reference = resolve_reference(cfg.reference, image_size=size)
    values = evaluate_images(
        images,
        reference,
        list(cfg.metrics.names),
        labels=labels,
        inception_weights=cfg.metrics.inception_weights,
        batch_size=cfg.batch_size,
        device=pick_device(cfg.device),
        cache_dir=cfg.metrics.cache_dir,
    )
    values = {k: float(v) for k, v in values.items()}
    out = Path(cfg.out) / "metrics.json"
    record = {"samples": str(cfg.samples), "reference": str(cfg.reference), **values}
    atomic_write_bytes(json.dumps(record, indent=2).encode(), out)
    for name, value in values.items():
        print(f"{name:>16s}  {value:.4f}")
    print(f"metrics json : {out}")
    return values


# What makes sense for each number this command reads (common.errors.check_values).
CHECKS = {
    "batch_size": "int>=1",
}


@hydra_main(
    "evaluate",
    legacy_flags={"out_dir": "out"},  # the former spelling, kept one release
    input_paths=("samples", "reference", "metrics.inception_weights", "metrics.cache_dir"),
    checks=CHECKS,
)
def main(cfg: DictConfig) -> None:
    OmegaConf.resolve(cfg)
    evaluate(cfg)


if __name__ == "__main__":
    main()
