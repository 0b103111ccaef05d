"""PCK-Transfer benchmarks (the library of ``python -m gangealing.pck``).

Thesis Sec. 4.4.2 ("Quantitative Results"): keypoints of a source image x_A are transferred to a
target image x_B through congealed space, *forward* with A's warp and *reverse* with B's warp
(:func:`gangealing.align.stn.image_to_image_points`), and PCK-Transfer@alpha counts the transfers
that land within ``alpha * threshold`` of B's ground truth (``alpha_bbox`` for SPair-71k, ``max(H,
W)`` for CUB and the synthetic benchmark). When the Spatial Transformer flips exactly one image of a
pair, keypoints with a left/right distinction are swapped by the dataset's permutation (the last
sentence of Sec. 4.4.2).

Methods: ``gangealing`` (a congealer: ``congealer.pt`` or a released model), ``congealing``
(classic least-squares pixel congealing of the evaluation images themselves, Sec. 4.2) and
``none`` (identity transfer).
Writes ``<out>/pck.json`` with ``pck@<alpha>`` (percent), counts, method, benchmark and config.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset

from common.checkpoint import write_json
from common.devices import pick_device
from common.errors import refuse_unused
from gangealing.align.congealer import Congealer
from gangealing.align.stn import image_to_image_points, nearest_neighbour_points
from gangealing.apps.congeal import refuse_ignored_options
from gangealing.data.datasets import (
    CUB_FLIP_PERMUTATION,
    CUBPairs,
    SPairPairs,
    image_threshold,
    load_rgb,
    map_points_to_window,
    pair_item,
    resample_window,
    square_window,
)
from gangealing.data.synthetic import all_pairs, read_keypoints_json
from gangealing.eval.congealing_baseline import (
    congeal,
    no_alignment_transfer,
    transfer_keypoints_via_congealing,
)
from gangealing.eval.pck import DEFAULT_ALPHAS, combine_pck, pck

log = logging.getLogger(__name__)

BENCHMARKS = ("spair", "cub", "synthetic")
METHODS = ("gangealing", "congealing", "none")
TRANSFERS = ("exact", "official")
SIDES = ("source", "target")  # keypoint transfer of method=gangealing (gangealing_transfer)
CONF = Path(__file__).parents[1] / "conf" / "pck.yaml"
MISSING_CONGEALER = (
    "method=gangealing needs ckpt=<run dir of python -m gangealing.train, its congealer.pt or a "
    "released model>; or use method=congealing / method=none for the baselines"
)


# ---------------------------------------------------------------------------- benchmarks


class SyntheticPairs(Dataset):
    """Ordered pairs of a folder written by :func:`gangealing.data.synthetic.write_image_folder`.

    Images are resampled to ``size`` (None: as written; keypoints follow exactly); the threshold
    is ``max(H, W)`` (:func:`gangealing.data.datasets.image_threshold`). All ordered pairs, or
    ``max_pairs`` of them drawn with ``seed``.
    """

    def __init__(
        self, root: str | Path, size: int | None, max_pairs: int | None = None, seed: int = 0
    ) -> None:
        self.root = Path(root)
        record = read_keypoints_json(self.root / "keypoints.json")
        self.files = [self.root / f for f in record["files"]]
        self.keypoints, self.visible = record["keypoints"], record["visible"]
        self.size = int(size or record["size"])
        pairs = all_pairs(len(self.files))
        if max_pairs is not None and max_pairs < len(pairs):
            order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed))
            pairs = [pairs[i] for i in order[:max_pairs].sort().values.tolist()]
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> dict[str, torch.Tensor]:
        image = load_rgb(self.files[index])
        window = (0.0, 0.0, float(image.size[0]), float(image.size[1]))
        return {
            "image": resample_window(image, window, self.size),
            "keypoints": map_points_to_window(self.keypoints[index], window, self.size),
            "visible": self.visible[index],
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        a, b = self.pairs[index]
        source, target = self.load(a), self.load(b)
        return pair_item(source, target, image_threshold((self.size, self.size)))


@dataclass
class Benchmark:
    """Pairs to evaluate plus what the pixel-congealing baseline needs: the identity of each
    pair's two images (``image_keys``) and a loader of one image by key."""

    name: str
    pairs: Dataset
    image_keys: list[tuple[Hashable, Hashable]]
    load_image: Callable[[Hashable], torch.Tensor]
    permutation: Sequence[int] | None


def build_benchmark(cfg: DictConfig) -> Benchmark:
    """The SPair-71k, CUB or synthetic pairs described by ``cfg`` (see ``conf/pck.yaml``)."""
    name = str(cfg.benchmark).lower()
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark={cfg.benchmark!r}: use one of {', '.join(BENCHMARKS)}")
    root = cfg.data.root
    if cfg.size is None and name != "synthetic":
        raise ValueError(
            f"size=null keeps the images' own sizes, which only benchmark=synthetic has; pass "
            f"size=<pixels> for benchmark={name}, e.g. size=256"
        )
    permutation = list(cfg.permutation) if cfg.get("permutation") is not None else None
    if name == "spair":
        if cfg.get("category") is None:
            raise ValueError("benchmark=spair needs category=<name>, e.g. category=cat")
        pairs = SPairPairs(root, cfg.category, split=cfg.split, size=cfg.size)
        if cfg.flips and permutation is None and cfg.method == "gangealing":
            raise ValueError(
                "flips=true on SPair-71k needs the category's left/right keypoint permutation "
                "(none ships with this package): pass permutation=[...] (one index per keypoint "
                "id) or flips=false"
            )
        keys = [(p["src_imname"], p["trg_imname"]) for p in pairs.pairs]

        def load_spair(key: Hashable) -> torch.Tensor:
            image = load_rgb(pairs.image_dir / str(key))
            return resample_window(image, square_window(*image.size, pairs.resize), pairs.size)

        return Benchmark(name, pairs, keys, load_spair, permutation)
    if name == "cub":
        cub_split = "test" if cfg.split is None else str(cfg.split)
        pairs = CUBPairs(root, cub_split, size=cfg.size, num_pairs=cfg.num_pairs, seed=cfg.seed)
        return Benchmark(
            name,
            pairs,
            list(pairs.pairs),
            lambda key: pairs.load(int(key))["image"],
            permutation or list(CUB_FLIP_PERMUTATION),
        )
    pairs = SyntheticPairs(root, cfg.size, cfg.get("max_pairs"), cfg.seed)
    return Benchmark(name, pairs, list(pairs.pairs), lambda k: pairs.load(int(k))["image"], None)


# ---------------------------------------------------------------------------- transfer


def permute_flipped(
    pred: torch.Tensor,
    visible_source: torch.Tensor,
    flipped_a: torch.Tensor,
    flipped_b: torch.Tensor,
    permutation: Sequence[int] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Swap left/right keypoints of pairs where exactly one image was flipped (Sec. 4.4.2).

    A's keypoint ``k`` lands on B's mirrored part, so the prediction for B's keypoint ``k`` is the
    transfer of A's keypoint ``permutation[k]`` (with its visibility). Identity without a
    permutation.
    """
    if permutation is None:
        return pred, visible_source
    index = torch.as_tensor(list(permutation), dtype=torch.long)
    if sorted(index.tolist()) != list(range(pred.shape[1])):
        raise ValueError(
            f"permutation must reorder 0..{pred.shape[1] - 1} (one entry per keypoint), got "
            f"{index.tolist()}; pass permutation=[...] with one index per keypoint"
        )
    swap = (flipped_a.bool() ^ flipped_b.bool()).to(pred.device)
    pred = torch.where(swap[:, None, None], pred[:, index], pred)
    visible_source = torch.where(swap[:, None], visible_source[:, index], visible_source)
    return pred, visible_source


def gangealing_transfer(
    points_a: torch.Tensor,
    visible_a: torch.Tensor,
    out_a: Any,
    out_b: Any,
    size_a: int | tuple[int, int],
    size_b: int | tuple[int, int],
    permutation: Sequence[int] | None = None,
    transfer: str = "exact",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Transfer A's keypoints ``[N, K, 2]`` to B with the congealer outputs of A and B
    (``STNOutput``: reverse ``grid`` into the original image, ``flipped``): forward warp with A's
    grid, reverse warp with B's grid, then :func:`permute_flipped`. Returns ``(pred, visible)``
    where ``visible`` is A's visibility in B's keypoint order. ``transfer``: ``exact`` (this
    package: the forward map refined to sub-pixel accuracy) or ``official`` (the released code's
    nearest congealed pixel, ``stn.nearest_neighbour_points``; grids at the flow size)."""
    if transfer not in TRANSFERS:
        raise ValueError(f"transfer={transfer!r}; choose one of {', '.join(TRANSFERS)}")
    move = image_to_image_points if transfer == "exact" else nearest_neighbour_points
    pred = move(points_a.float(), out_a.grid, out_b.grid, size_a, size_b)
    flipped_a = out_a.flipped if out_a.flipped is not None else torch.zeros(len(pred), dtype=bool)
    flipped_b = out_b.flipped if out_b.flipped is not None else torch.zeros(len(pred), dtype=bool)
    return permute_flipped(pred, visible_a, flipped_a, flipped_b, permutation)


def congealing_thetas(
    benchmark: Benchmark, size: int, **congeal_kwargs: Any
) -> dict[Hashable, torch.Tensor]:
    """Classic least-squares congealing (Sec. 4.2) of every image used by the pairs, at ``size``
    pixels (the similarity warps are in normalised coordinates, valid at any resolution)."""
    keys = sorted({k for pair in benchmark.image_keys for k in pair}, key=str)
    images = torch.stack(
        [
            F.interpolate(benchmark.load_image(k)[None], size=(size, size), mode="bilinear")[0]
            for k in keys
        ]
    )
    with torch.enable_grad():  # congealing optimises the warps by gradient descent
        result = congeal(images, **congeal_kwargs)
    return dict(zip(keys, result.thetas, strict=True))


# ---------------------------------------------------------------------------- evaluation


def both_ways_default(benchmark: str, both_ways: bool | None) -> bool:
    """The official protocols: CUB random pairs both ways, SPair-71k fixed pairs one way."""
    return benchmark == "cub" if both_ways is None else bool(both_ways)


def _align(congealer: Congealer, images: torch.Tensor, device, options: dict) -> Any:
    """Congeal a batch and bring the reverse grids and flip flags back to the CPU."""
    out = congealer(images.to(device), **options)
    out.grid, out.flipped = out.grid.cpu(), out.flipped.cpu()
    return out


@torch.no_grad()
def evaluate(
    benchmark: Benchmark,
    method: str = "gangealing",
    congealer: Congealer | None = None,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    batch_size: int = 32,
    cluster: int | None = None,
    flips: bool | None = None,
    iters: int | None = None,
    congealing: dict[str, Any] | None = None,
    device: torch.device | str = "cpu",
    transfer: str = "exact",
    both_ways: bool = False,
) -> dict[str, Any]:
    """PCK-Transfer of ``method`` on ``benchmark`` (thesis Sec. 4.4.2); :func:`combine_pck` keys.
    ``both_ways`` also transfers B -> A (the official CUB protocol, image-size threshold); SPair-71k
    pairs are fixed and evaluated A -> B only, with the target's bounding-box threshold."""
    if both_ways and benchmark.name == "spair":
        raise ValueError(
            "both_ways=true needs the image-size threshold; SPair-71k uses the target's bounding "
            "box and its official protocol evaluates its fixed pairs one way: pass both_ways=false"
        )
    if method not in METHODS:
        raise ValueError(f"unknown method={method!r}: use one of {', '.join(METHODS)}")
    if method == "gangealing":
        if congealer is None:
            raise ValueError(MISSING_CONGEALER)
        if congealer.num_modes > 1 and cluster is None:
            raise ValueError(
                f"the congealer has {congealer.num_modes} modes (K > 1, Eq. 4.6): pass "
                f"cluster=<0..{congealer.num_modes - 1}>, the mode that aligns this category"
            )
        refuse_ignored_options(congealer, cluster, flips, iters)
        congealer = congealer.to(device)
    thetas = None
    if method == "congealing":
        options = dict(congealing or {})
        thetas = congealing_thetas(benchmark, int(options.pop("size", 64)), **options)
    results = []
    loader = DataLoader(benchmark.pairs, batch_size=batch_size, shuffle=False)
    start = 0
    for batch in loader:
        n = batch["source_keypoints"].shape[0]
        points = (batch["source_keypoints"].float(), batch["target_keypoints"].float())
        sizes = (tuple(batch["source_image"].shape[-2:]), tuple(batch["target_image"].shape[-2:]))
        visible = (batch["source_visible"].bool(), batch["target_visible"].bool())
        if method == "gangealing":
            # official: grids at the size the STN was trained at (its flow size)
            size = sizes[0][0] if transfer == "exact" else congealer.size
            options = {"cluster": cluster, "output_size": size, "iters": iters, "flips": flips}
            aligned = [_align(congealer, batch[f"{s}_image"], device, options) for s in SIDES]
        elif method == "congealing":
            keys = benchmark.image_keys[start : start + n]
            aligned = [torch.stack([thetas[k[i]] for k in keys]) for i in (0, 1)]
        # A -> B with the target's threshold; B -> A (both_ways) with the image-size rule of A
        for src, dst in ((0, 1), (1, 0)) if both_ways else ((0, 1),):
            vis = visible[src]
            if method == "gangealing":
                pred, vis = gangealing_transfer(
                    points[src], vis, aligned[src], aligned[dst], sizes[src], sizes[dst],
                    benchmark.permutation, transfer,
                )  # fmt: skip
            elif method == "congealing":
                pred = transfer_keypoints_via_congealing(
                    points[src], aligned[src], aligned[dst], sizes[src], sizes[dst]
                )
            else:
                pred = no_alignment_transfer(points[src], sizes[src], sizes[dst])
            threshold = batch["threshold"].float() if dst == 1 else float(max(sizes[dst]))
            results.append(pck(pred, points[dst], visible[dst] & vis, threshold, alphas))
        start += n
    combined = combine_pck(results)
    if both_ways:  # two transfers per pair, every keypoint counted in both directions
        combined["num_pairs"] //= 2
    return {**combined, "both_ways": both_ways}


def refuse_ignored_keys(cfg: DictConfig) -> None:
    """Refuse keys this method and benchmark do not read: they must keep their ``conf/pck.yaml``
    defaults. ``ckpt`` and ``congealing.*`` stay free, so that one sweep over
    ``method=`` compares GANgealing with the baselines."""
    defaults = OmegaConf.load(CONF)
    method, name = str(cfg.method), str(cfg.benchmark).lower()
    unused: dict[str, tuple[str, str]] = {}  # key: (why it is ignored, what would make it apply)
    if method != "gangealing":
        for key in ("preset", "cluster", "flips", "iters", "transfer", "permutation"):
            unused[key] = (f"method={method} runs no congealer", "method=gangealing")
        unused["device"] = (f"method={method} computes on the CPU", "method=gangealing")
    elif cfg.flips is False:
        unused["permutation"] = ("flips=false mirrors no image", "flips=true")
    if name == "synthetic":
        unused["split"] = ("benchmark=synthetic has no splits", "benchmark=spair or cub")
        unused["permutation"] = ("benchmark=synthetic has no left/right keypoints", "benchmark=cub")
        if cfg.max_pairs is None:
            unused["seed"] = ("benchmark=synthetic evaluates all pairs", "max_pairs=<N>")
    if name != "spair":
        unused["category"] = (f"benchmark={name} has no categories", "benchmark=spair")
    else:
        unused["seed"] = ("benchmark=spair evaluates its fixed pairs", "benchmark=cub")
    if name != "cub":
        unused["num_pairs"] = ("only benchmark=cub draws random pairs", "benchmark=cub")
    if name != "synthetic":
        unused["max_pairs"] = ("only benchmark=synthetic samples its pairs", "benchmark=synthetic")
    refuse_unused(cfg, defaults, {k: (why, f"pass {fix}") for k, (why, fix) in unused.items()})


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate the config's method and write ``<out>/pck.json``; returns what it wrote."""
    method = str(cfg.method)
    if method not in METHODS:
        raise ValueError(f"unknown method={method!r}: use one of {', '.join(METHODS)}")
    refuse_ignored_keys(cfg)
    if method == "gangealing" and cfg.get("ckpt") is None:
        raise ValueError(MISSING_CONGEALER)
    benchmark = build_benchmark(cfg)
    congealer = (
        Congealer.load(cfg.ckpt, preset=cfg.get("preset")) if method == "gangealing" else None
    )
    began = time.perf_counter()
    results = evaluate(
        benchmark,
        method,
        congealer,
        alphas=list(cfg.alphas),
        batch_size=cfg.batch_size,
        cluster=cfg.cluster,
        flips=cfg.flips,
        iters=cfg.iters,
        congealing=OmegaConf.to_container(cfg.congealing, resolve=True),
        device=pick_device(cfg.device),
        transfer=cfg.get("transfer", "exact"),
        both_ways=both_ways_default(benchmark.name, cfg.get("both_ways")),
    )
    record = {
        **results,
        "method": method,
        "benchmark": benchmark.name,
        "seconds": round(time.perf_counter() - began, 2),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(record, out / "pck.json")
    return record
