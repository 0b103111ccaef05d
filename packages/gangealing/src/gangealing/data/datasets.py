"""Image folders and the keypoint benchmarks of PCK-Transfer (thesis Sec. 4.4.2).

- :class:`ImageFolder`: every image under a folder, resized and center-cropped, in ``[-1, 1]``.
- :class:`SPairPairs`: SPair-71k pairs of one category with ``alpha_bbox`` thresholds.
- :class:`CUBPairs`: CUB-200-2011 pairs with the ``max(H, W)`` threshold and the left/right part
  permutation :data:`CUB_FLIP_PERMUTATION`.

Conventions: images are float tensors ``[3, H, W]`` (RGB, ``[-1, 1]``); keypoints are pixel
coordinates ``(x, y)`` with pixel centres at integers. Resizing a window ``[x0, x0 + w)`` of the
original (in PIL's continuous coordinates, pixel ``k`` covering ``[k, k + 1)``) to ``size`` pixels
maps a keypoint by ``x' = (x - x0 + 0.5) * size / w - 0.5``; the images are resampled with the
same geometry, so keypoints stay on the content exactly.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from common.data.images import IMAGE_EXTENSIONS, list_images, open_image

logger = logging.getLogger(__name__)

SPAIR_LAYOUT = (
    "SPair-71k layout: <root>/JPEGImages/<category>/*.jpg and "
    "<root>/PairAnnotation/<trn|val|test>/*.json (extract SPair-71k.tar.gz and pass "
    "data.root=<its SPair-71k folder>)"
)
CUB_LAYOUT = (
    "CUB-200-2011 layout: <root>/images.txt, <root>/images/<class>/<file>.jpg, "
    "<root>/parts/part_locs.txt, <root>/bounding_boxes.txt, <root>/train_test_split.txt "
    "(extract CUB_200_2011.tgz and pass data.root=<its CUB_200_2011 folder>)"
)

CUB_PART_NAMES: tuple[str, ...] = (
    "back", "beak", "belly", "breast", "crown", "forehead", "left eye", "left leg",
    "left wing", "nape", "right eye", "right leg", "right wing", "tail", "throat",
)  # fmt: skip
"""CUB's 15 parts in the order of ``parts/parts.txt`` (0-based here, 1-based on disk)."""

CUB_FLIP_PERMUTATION: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 10, 11, 12, 9, 6, 7, 8, 13, 14)
"""Index map for a horizontal flip: part ``k`` of the flipped bird is part ``perm[k]``
(left/right eye 6<->10, leg 7<->11, wing 8<->12); an involution."""


# ---------------------------------------------------------------------------- image loading


def _mode_description(image: Image.Image) -> str:
    return f"{len(image.getbands())} ({image.mode})"


def require_readable(files: Sequence[Path], folder: Path) -> None:
    """Refuse a folder none of whose image files opens, before any work starts (the files are
    tried in order until one opens; an unreadable one among readable ones is named on loading)."""
    for path in files:
        try:
            open_image(path)
            return
        except (OSError, ValueError):
            continue
    raise ValueError(
        f"no readable image in {folder}: none of its {len(files)} image files opens (first: "
        f"{files[0].name}); put readable PNG/JPEG images there or pass another folder"
    )


def load_rgb(
    path: str | os.PathLike, strict_channels: bool = False, warned: set[str] | None = None
) -> Image.Image:
    """Open an image as RGB; other modes raise (``strict_channels``) or convert with a warning."""
    image = open_image(path)
    if image.mode == "RGB":
        return image
    bands = len(image.getbands())
    if bands not in (1, 3, 4):
        raise ValueError(
            f"{path} has {bands} channels (PIL mode {image.mode}); images must have 1 (grayscale), "
            "3 (RGB) or 4 (RGBA) channels. Convert it, e.g. "
            "PIL.Image.open(p).convert('RGB').save(p), or remove it from the folder"
        )
    if strict_channels:
        raise ValueError(
            f"expected RGB images with 3 channels, got {_mode_description(image)} in {path}; "
            "convert them or pass strict_channels=False to convert them to RGB on loading"
        )
    if warned is None or image.mode not in warned:
        logger.warning(
            "converting %s images to RGB (first one: %s); pass strict_channels=True to refuse "
            "them instead",
            image.mode,
            path,
        )
        if warned is not None:
            warned.add(image.mode)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        high = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        image = Image.fromarray((np.clip(array / high, 0, 1) * 255).round().astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def resample_window(
    image: Image.Image, window: tuple[float, float, float, float], size: int, fill: str = "black"
) -> torch.Tensor:
    """Resample ``window = (x0, y0, w, h)`` of ``image`` to ``[3, size, size]`` in ``[-1, 1]``.

    Parts of the window outside the image are black (-1), or repeat the nearest edge pixel with
    ``fill="edge"`` (official ``prepare_data.border_pad``). Antialiased bilinear resampling.
    """
    x0, y0, w, h = window
    width, height = image.size
    left = max(0, math.ceil(-x0))
    top = max(0, math.ceil(-y0))
    right = max(0, math.ceil(x0 + w - width))
    bottom = max(0, math.ceil(y0 + h - height))
    if left or top or right or bottom:
        if fill == "edge":
            padded = np.pad(np.asarray(image), [(top, bottom), (left, right), (0, 0)], mode="edge")
            canvas = Image.fromarray(padded)
        else:
            canvas = Image.new("RGB", (width + left + right, height + top + bottom))
            canvas.paste(image, (left, top))
        image, x0, y0 = canvas, x0 + left, y0 + top
    box = (x0, y0, x0 + w, y0 + h)
    resized = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
    array = np.asarray(resized, dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous() / 127.5 - 1.0


def map_points_to_window(
    points: torch.Tensor, window: tuple[float, float, float, float], size: int
) -> torch.Tensor:
    """Map pixel coordinates ``[..., 2]`` of the original image into the resampled window."""
    x0, y0, w, h = window
    out = torch.as_tensor(points, dtype=torch.float32).clone()
    out[..., 0] = (out[..., 0] - x0 + 0.5) * size / w - 0.5
    out[..., 1] = (out[..., 1] - y0 + 0.5) * size / h - 0.5
    return out


def square_window(width: int, height: int, mode: str) -> tuple[float, float, float, float]:
    """``"crop"``: central square of side ``min``; ``"pad"``: centred square of side ``max``;
    ``"stretch"``: the whole image (aspect ratio not kept)."""
    if mode == "stretch":
        return 0.0, 0.0, float(width), float(height)
    if mode not in ("crop", "pad"):
        raise ValueError(f"resize mode must be 'crop', 'pad' or 'stretch', got {mode!r}")
    side = float(min(width, height) if mode == "crop" else max(width, height))
    return (width - side) / 2, (height - side) / 2, side, side


SQUARE_MODES = ("crop", "border_pad")


class ImageFolder(Dataset):
    """Every image under ``root`` (sorted, recursive) made square and resized to ``size``:
    ``square="crop"`` takes the central square, ``"border_pad"`` keeps the whole photo and pads
    the short side with its edge pixels (official ``prepare_data.border_pad``).

    Items are ``[3, size, size]`` tensors in ``[-1, 1]``. Grayscale, palette and RGBA images are
    converted to RGB with a logged warning unless ``strict_channels=True``, which refuses them.
    Used for the real-image test sets of thesis Sec. 4.4.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        size: int,
        strict_channels: bool = False,
        square: str = "crop",
    ) -> None:
        if square not in SQUARE_MODES:
            raise ValueError(f"square={square!r}; choose one of {', '.join(SQUARE_MODES)}")
        self.square = square
        self.root = Path(root)
        self.size = int(size)
        self.strict_channels = strict_channels
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist; check the path")
        self.files = list_images(self.root)
        if not self.files:
            raise ValueError(
                f"no images found in {self.root} (searched recursively for "
                f"{', '.join(IMAGE_EXTENSIONS)}); put images there or pass another root"
            )
        require_readable(self.files, self.root)
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = load_rgb(self.files[index], self.strict_channels, self._warned)
        if self.square == "crop":
            return resample_window(image, square_window(*image.size, "crop"), self.size)
        return resample_window(image, square_window(*image.size, "pad"), self.size, fill="edge")

    def image_size(self, index: int) -> tuple[int, int]:
        """(height, width) of image ``index`` on disk (read from its header)."""
        with Image.open(self.files[index]) as image:
            return image.height, image.width


def bbox_threshold(bboxes: torch.Tensor | Sequence[Sequence[float]]) -> torch.Tensor:
    """SPair-71k ``alpha_bbox`` distance scale ``max(H_bbox, W_bbox)`` (thesis Sec. 4.4.2).

    ``bboxes`` is ``[N, 4]`` (or ``[4]``) as ``(x1, y1, x2, y2)``, the layout of SPair-71k's
    ``trg_bndbox``. Returns ``[N]`` (or a scalar tensor).
    """
    boxes = torch.as_tensor(bboxes, dtype=torch.float32)
    if boxes.shape[-1] != 4:
        raise ValueError(f"bboxes must have shape [N, 4] as (x1, y1, x2, y2), got {boxes.shape}")
    width = boxes[..., 2] - boxes[..., 0]
    height = boxes[..., 3] - boxes[..., 1]
    if (width < 0).any() or (height < 0).any():
        raise ValueError("bboxes must be (x1, y1, x2, y2) with x2 >= x1 and y2 >= y1")
    return torch.maximum(width, height)


def image_threshold(sizes: torch.Tensor | Sequence[Sequence[int]] | Sequence[int]) -> torch.Tensor:
    """CUB distance scale ``max(H, W)`` of the target image (thesis Sec. 4.4.2).

    ``sizes`` is ``[N, 2]`` (or ``[2]``) as ``(H, W)``. Returns ``[N]`` (or a scalar tensor).
    """
    sizes = torch.as_tensor(sizes, dtype=torch.float32)
    if sizes.shape[-1] != 2:
        raise ValueError(f"sizes must have shape [N, 2] as (H, W), got {tuple(sizes.shape)}")
    return sizes.max(dim=-1).values


def pair_item(
    source: dict[str, Any], target: dict[str, Any], threshold: torch.Tensor
) -> dict[str, Any]:
    """One PCK-Transfer pair: ``source_*``/``target_*`` fields, the keypoints visible in both
    images and the target's distance scale (Sec. 4.4.2)."""
    item: dict[str, Any] = {f"source_{k}": v for k, v in source.items()}
    item.update({f"target_{k}": v for k, v in target.items()})
    item["visible"] = source["visible"] & target["visible"]
    item["threshold"] = threshold
    return item


# ---------------------------------------------------------------------------- SPair-71k


def _require(path: Path, layout: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; expected the {layout}")
    return path


class SPairPairs(Dataset):
    """SPair-71k keypoint pairs of one category for PCK@alpha_bbox (thesis Sec. 4.4.2, Table 4.1).

    Reads ``PairAnnotation/<split>/*.json`` (fields ``src_imname``, ``trg_imname``, ``category``,
    ``src_kps``, ``trg_kps``, ``src_bndbox``, ``trg_bndbox`` as ``(x1, y1, x2, y2)``, ``kps_ids``,
    ``mirror``) and the images in ``JPEGImages/<category>/``. Each item holds both images
    resampled to ``size`` (``resize="pad"`` keeps the aspect ratio by padding to a square, as the
    GANgealing evaluation does; ``"stretch"`` does not), keypoints ``[K, 2]`` scattered to their
    ``kps_ids`` (K = largest id + 1 in the category; absent ids are not visible), scaled boxes,
    and ``threshold = max(H_bbox, W_bbox)`` of the scaled target box.
    """

    SPLITS = {"train": "trn", "trn": "trn", "val": "val", "test": "test"}

    def __init__(
        self,
        root: str | os.PathLike,
        category: str,
        split: str = "test",
        size: int = 256,
        resize: str = "pad",
    ) -> None:
        if split not in self.SPLITS:
            raise ValueError(f"split must be one of {sorted(self.SPLITS)}, got {split!r}")
        square_window(1, 1, resize)
        self.root, self.category, self.size, self.resize = Path(root), category, int(size), resize
        _require(self.root, SPAIR_LAYOUT)
        self.image_dir = _require(self.root / "JPEGImages" / category, SPAIR_LAYOUT)
        pair_dir = _require(self.root / "PairAnnotation" / self.SPLITS[split], SPAIR_LAYOUT)
        self.pairs: list[dict[str, Any]] = []
        for path in sorted(pair_dir.glob("*.json")):
            if ":" in path.stem and not path.stem.endswith(f":{category}"):
                continue
            with open(path) as f:
                annotation = json.load(f)
            missing = {"src_imname", "trg_imname", "src_kps", "trg_kps", "kps_ids"}
            missing -= annotation.keys()
            if missing:
                raise ValueError(
                    f"{path} lacks fields {sorted(missing)}; is it an SPair-71k pair file?"
                )
            if annotation.get("category", category) == category:
                annotation["pair_name"] = path.stem
                self.pairs.append(annotation)
        if not self.pairs:
            raise ValueError(
                f"no {split} pairs of category {category!r} in {pair_dir}; check the category "
                "name (e.g. 'cat', 'bicycle') and the split"
            )
        self.num_keypoints = 1 + max((int(i) for p in self.pairs for i in p["kps_ids"]), default=-1)

    def __len__(self) -> int:
        return len(self.pairs)

    def _side(self, annotation: dict[str, Any], side: str) -> dict[str, torch.Tensor]:
        path = _require(self.image_dir / annotation[f"{side}_imname"], SPAIR_LAYOUT)
        image = load_rgb(path)
        window = square_window(*image.size, self.resize)
        ids = torch.tensor([int(i) for i in annotation["kps_ids"]], dtype=torch.long)
        raw = torch.tensor(annotation[f"{side}_kps"], dtype=torch.float32).reshape(-1, 2)
        if raw.shape[0] != ids.shape[0]:
            raise ValueError(
                f"pair {annotation['pair_name']}: {raw.shape[0]} {side}_kps but "
                f"{ids.shape[0]} kps_ids"
            )
        points = torch.zeros(self.num_keypoints, 2)
        visible = torch.zeros(self.num_keypoints, dtype=torch.bool)
        points[ids] = map_points_to_window(raw, window, self.size)
        visible[ids] = True
        box = torch.tensor(annotation[f"{side}_bndbox"], dtype=torch.float32).reshape(2, 2)
        box = map_points_to_window(box, window, self.size).reshape(4)
        return {
            "image": resample_window(image, window, self.size),
            "keypoints": points,
            "visible": visible,
            "bbox": box,
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        annotation = self.pairs[index]
        source, target = self._side(annotation, "src"), self._side(annotation, "trg")
        item = pair_item(source, target, bbox_threshold(target["bbox"]))
        item["mirror"] = int(annotation.get("mirror", 0))
        item["pair_name"] = annotation["pair_name"]
        return item


# ---------------------------------------------------------------------------- CUB-200-2011


def _read_table(path: Path) -> dict[int, list[str]]:
    table: dict[int, list[str]] = {}
    with open(_require(path, CUB_LAYOUT)) as f:
        for line in f:
            fields = line.split()
            if fields:
                table[int(fields[0])] = fields[1:]
    return table


class CUBPairs(Dataset):
    """CUB-200-2011 keypoint pairs for PCK-Transfer with the ``max(H, W)`` rule (Table 4.2).

    Images of ``split`` (``"train"``, ``"test"`` or ``"all"``, from ``train_test_split.txt``) are
    cropped to a square around their bird box (``crop="bbox"``, side ``bbox_padding *
    max(w, h)``, black outside the image) or padded to a square (``crop="image"``), then resized to
    ``size``. Keypoints are CUB's 15 parts (``parts/part_locs.txt``, coordinates used as given)
    with their visibility flags; ``threshold`` is ``size``, the ``max(H, W)`` of the produced
    image. ``pairs`` lists ``(image_id_a, image_id_b)`` with CUB's 1-based image ids; by default
    ``num_pairs`` ordered pairs are drawn with ``seed`` (the thesis uses 10,000 random pairs; all
    pairs when there are fewer). Use :data:`CUB_FLIP_PERMUTATION` when an image is flipped.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "test",
        size: int = 256,
        pairs: Sequence[tuple[int, int]] | None = None,
        num_pairs: int = 10_000,
        seed: int = 0,
        crop: str = "bbox",
        bbox_padding: float = 1.05,
    ) -> None:
        if split not in ("train", "test", "all"):
            raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
        if crop not in ("bbox", "image"):
            raise ValueError(f"crop must be 'bbox' or 'image', got {crop!r}")
        self.root, self.size, self.crop = Path(root), int(size), crop
        self.bbox_padding = bbox_padding
        _require(self.root, CUB_LAYOUT)
        names = _read_table(self.root / "images.txt")
        is_train = _read_table(self.root / "train_test_split.txt")
        boxes = _read_table(self.root / "bounding_boxes.txt")
        self.image_dir = _require(self.root / "images", CUB_LAYOUT)
        self.files = {i: self.image_dir / fields[0] for i, fields in names.items()}
        self.bboxes = {i: [float(v) for v in fields[:4]] for i, fields in boxes.items()}
        self.parts: dict[int, torch.Tensor] = {}
        with open(_require(self.root / "parts" / "part_locs.txt", CUB_LAYOUT)) as f:
            for line in f:
                fields = line.split()
                if not fields:
                    continue
                image_id, part = int(fields[0]), int(fields[1])
                locs = self.parts.setdefault(image_id, torch.zeros(len(CUB_PART_NAMES), 3))
                locs[part - 1] = torch.tensor([float(v) for v in fields[2:5]])
        wanted = {"train": ("1",), "test": ("0",), "all": ("0", "1")}[split]
        self.image_ids = sorted(i for i in names if is_train.get(i, ["?"])[0] in wanted)
        if len(self.image_ids) < 2:
            raise ValueError(f"CUB split {split!r} in {self.root} has fewer than 2 images")
        if pairs is None:
            pairs = self._sample_pairs(num_pairs, seed)
        self.pairs = [(int(a), int(b)) for a, b in pairs]
        unknown = {i for pair in self.pairs for i in pair} - set(names)
        if unknown:
            raise ValueError(f"pairs use image ids not in images.txt: {sorted(unknown)[:10]}")

    def _sample_pairs(self, num_pairs: int, seed: int) -> list[tuple[int, int]]:
        ids, n = self.image_ids, len(self.image_ids)
        if n * (n - 1) <= num_pairs:
            return [(a, b) for a in ids for b in ids if a != b]
        rng = np.random.default_rng(seed)
        first = rng.integers(0, n, size=num_pairs)
        second = (first + rng.integers(1, n, size=num_pairs)) % n
        return [(ids[a], ids[b]) for a, b in zip(first.tolist(), second.tolist(), strict=True)]

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, image_id: int) -> dict[str, torch.Tensor]:
        """One image with its 15 keypoints ``[15, 2]``, visibility ``[15]`` and scaled box."""
        image = load_rgb(_require(self.files[image_id], CUB_LAYOUT))
        if image_id not in self.bboxes or image_id not in self.parts:
            raise ValueError(f"CUB image {image_id} lacks a bounding box or part annotation")
        x, y, w, h = self.bboxes[image_id]
        if self.crop == "bbox":
            side = self.bbox_padding * max(w, h)
            window = (x + w / 2 - side / 2, y + h / 2 - side / 2, side, side)
        else:
            window = square_window(*image.size, "pad")
        locs = self.parts[image_id]
        box = map_points_to_window(torch.tensor([[x, y], [x + w, y + h]]), window, self.size)
        return {
            "image": resample_window(image, window, self.size),
            "keypoints": map_points_to_window(locs[:, :2], window, self.size),
            "visible": locs[:, 2] > 0,
            "bbox": box.reshape(4),
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        a, b = self.pairs[index]
        source, target = self.load(a), self.load(b)
        item = pair_item(source, target, torch.tensor(float(self.size)))
        item["source_id"], item["target_id"] = a, b
        return item
