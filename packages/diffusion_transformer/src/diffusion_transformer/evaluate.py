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

from omegaconf import DictConfig, OmegaConf

from common.cli import hydra_main

# What makes sense for each number this command reads (common.errors.check_values).
CHECKS = {
    "batch_size": "int>=1",
}


@hydra_main("evaluate", checks=CHECKS)
def main(cfg: DictConfig) -> None:
    from diffusion_transformer.metrics import evaluate

    OmegaConf.resolve(cfg)
    evaluate(cfg)


if __name__ == "__main__":
    main()
