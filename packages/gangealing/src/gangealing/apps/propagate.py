"""Propagate one edit from congealed space to a folder of images (thesis Sec. 4.4.1, Fig. 4.4;
the library of ``python -m gangealing.propagate``).

``python -m gangealing.propagate ckpt=<run> data.root=<folder> edit=<file> size=256``

The edit is drawn on the average congealed image (``average.png`` of ``gangealing.congeal``), at
any resolution (it is resized to ``size`` x ``size``, nearest neighbour for labels):

- an RGBA PNG with transparency: an **overlay** composited onto every image -> ``edited/``;
- a single-channel or palette PNG of class indices 0..K-1: a **label map** -> ``labels/`` (8-bit
  palette PNGs holding the class index, 255 where no congealed pixel lands) and ``overlays/``
  (the colours blended over the image; class 0 counts as background and is not drawn);
- a ``.json`` file: **keypoints** in congealed pixels, either ``[[x, y], ...]`` at ``size`` or
  ``{"points": [[x, y], ...], "size": S}`` at resolution S -> ``keypoints/`` (points drawn on the
  images) and ``keypoints.json`` (every image's points, in-image visibility and flip).

When the congealer has a learned target mode, ``target.png`` shows the edit on it: G(c) at
``size``, the image every input is aligned to.

Images are loaded center-cropped at ``image_size`` (default ``size``); the congealer runs at
``size`` and its grids, being normalised, map straight into the ``image_size`` images.
Videos: extract frames first, ``ffmpeg -i video.mp4 frames/%05d.png``, propagate with
``data.root=frames``, and reassemble ``ffmpeg -i <out>/edited/%05d.png edited.mp4`` (the thesis
applies T per frame, without temporal information).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader

from common.checkpoint import write_json
from common.data.images import open_image, save_png, to_uint8
from gangealing.align.congealer import Congealer
from gangealing.apps.congeal import refuse_ignored_options
from gangealing.apps.correspondence import propagate_keypoints, propagate_labels, propagate_overlay
from gangealing.data.datasets import ImageFolder

EDIT_TYPES = ("auto", "overlay", "labels", "keypoints")
LABEL_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L")
ALPHA_MODES = ("RGBA", "LA", "PA")
NO_LABEL = 255
LABEL_ALPHA, POINT_RADIUS = 0.5, 2.0  # the defaults of label_alpha= and point_radius=


@dataclass
class Edit:
    """A loaded edit at the congealed size: ``overlay [4, S, S]`` in [0, 1], ``labels [S, S]``
    (with ``palette [256, 3]`` uint8) or ``points [K, 2]`` congealed pixels."""

    kind: str
    overlay: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    num_classes: int = 0
    palette: np.ndarray | None = None
    points: torch.Tensor | None = None


def default_palette() -> np.ndarray:
    """The PASCAL VOC colour map [256, 3]: class 0 black, 255 the 'void' colour."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        c, r, g, b = index, 0, 0, 0
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette[index] = (r, g, b)
    return palette


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ALPHA_MODES or (image.mode == "P" and "transparency" in image.info)


def _load_overlay(image: Image.Image, path: Path, size: int) -> torch.Tensor:
    if not _has_alpha(image):
        raise ValueError(
            f"{path} has no alpha channel (PIL mode {image.mode}): an overlay must be an RGBA PNG "
            "with transparency where the images should stay unchanged; save it as RGBA PNG with "
            "transparency (for a label map, save a single-channel or palette PNG of class indices)"
        )
    rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
    rgba = torch.from_numpy(rgba).permute(2, 0, 1)
    premultiplied = torch.cat([rgba[:3] * rgba[3:], rgba[3:]])[None]
    if premultiplied.shape[-2:] != (size, size):
        premultiplied = F.interpolate(
            premultiplied, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    color, alpha = premultiplied[0, :3], premultiplied[0, 3:]
    return torch.cat([color / alpha.clamp_min(1e-6), alpha]).clamp(0, 1)


def _load_labels(image: Image.Image, path: Path, size: int, max_classes: int) -> Edit:
    if image.mode not in LABEL_MODES:
        raise ValueError(
            f"{path} is a {image.mode} image: a label map must be a single-channel (grayscale) or "
            "palette PNG whose pixel values are class indices 0..K-1"
        )
    palette = default_palette()
    if image.mode == "P" and image.getpalette():
        own = np.asarray(image.getpalette(), dtype=np.uint8).reshape(-1, 3)[:256]
        palette[: len(own)] = own
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.NEAREST)
    labels = torch.from_numpy(np.asarray(image).astype(np.int64))
    num_classes = int(labels.max()) + 1
    if labels.min() < 0 or num_classes > max_classes:
        raise ValueError(
            f"{path} has values up to {num_classes - 1}, i.e. {num_classes} classes, more than "
            f"max_classes={max_classes}: store consecutive class indices 0..K-1 (e.g. a palette "
            "PNG) or raise max_classes=<K>"
        )
    return Edit("labels", labels=labels, num_classes=num_classes, palette=palette)


def _load_points(path: Path, size: int) -> torch.Tensor:
    record = json.loads(path.read_text())
    source_size = size
    if isinstance(record, dict):
        source_size = int(record.get("size", size))
        record = record.get("points")
    points = torch.as_tensor(record, dtype=torch.float32) if record else torch.zeros(0)
    if points.ndim != 2 or points.shape[1] != 2 or points.shape[0] == 0:
        raise ValueError(
            f"{path} must hold a non-empty list of [x, y] congealed pixel coordinates, or "
            '{"points": [[x, y], ...], "size": S}'
        )
    outside = ((points < -0.5) | (points > source_size - 0.5)).any(dim=1)
    if outside.any():
        k = int(outside.nonzero()[0])
        raise ValueError(
            f"keypoint {k} at {points[k].tolist()} in {path} lies outside the congealed image "
            f"(pixels 0..{source_size - 1}): give points on the {source_size} x {source_size} "
            'average.png, or set "size" in the JSON to the resolution they were drawn at'
        )
    return (points + 0.5) * (size / source_size) - 0.5


def load_edit(
    path: str | Path, edit_type: str = "auto", size: int = 256, max_classes: int = 255
) -> Edit:
    """Read an edit file and resize it to the congealed ``size`` (see the module docstring)."""
    path = Path(path)
    if edit_type not in EDIT_TYPES:
        raise ValueError(f"edit_type must be one of {EDIT_TYPES}, got {edit_type!r}")
    if not path.is_file():
        raise FileNotFoundError(f"edit file {path} does not exist; check edit=")
    if not 1 <= max_classes <= NO_LABEL:
        raise ValueError(
            f"max_classes must be in 1..{NO_LABEL} (8-bit label PNGs), got {max_classes}"
        )
    is_json = path.suffix.lower() == ".json"
    if edit_type == "keypoints" or (edit_type == "auto" and is_json):
        if not is_json:
            raise ValueError(f"keypoints must be a .json file of [x, y] points, got {path}")
        edit = Edit("keypoints", points=_load_points(path, size))
    elif is_json:
        raise ValueError(f"{path} is JSON, which holds keypoints: pass edit_type=keypoints or auto")
    else:
        image = open_image(path)
        labels = edit_type == "labels" or (edit_type == "auto" and image.mode in LABEL_MODES)
        if labels and not (edit_type == "auto" and _has_alpha(image)):
            return _load_labels(image, path, size, max_classes)
        edit = Edit("overlay", overlay=_load_overlay(image, path, size))
    if max_classes != NO_LABEL:
        raise ValueError(
            f"max_classes={max_classes} is ignored because only edit_type=labels uses it and "
            f"{path} is edit_type={edit.kind}; drop it, or pass a label map"
        )
    return edit


def _blend_labels(
    image: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float
) -> np.ndarray:
    """Blend the label colours over the image; class 0 (background) and 255 (no label) stay."""
    drawn = (labels > 0) & (labels != NO_LABEL)
    colours = palette[labels].astype(np.float32)
    out = image.astype(np.float32)
    out[drawn] = (1 - alpha) * out[drawn] + alpha * colours[drawn]
    return out.round().clip(0, 255).astype(np.uint8)


def _draw_points(
    image: np.ndarray,
    points: torch.Tensor,
    visible: torch.Tensor,
    palette: np.ndarray,
    radius: float,
) -> Image.Image:
    """Keypoint k as a disc of colour ``palette[1 + k]`` (consistent across images)."""
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    for k, ((x, y), seen) in enumerate(zip(points.tolist(), visible.tolist(), strict=True)):
        if not seen:
            continue
        colour = tuple(int(v) for v in palette[1 + k % 254])
        box = (x - radius, y - radius, x + radius, y + radius)
        draw.ellipse(box, fill=colour, outline=(255, 255, 255))
    return canvas


@torch.no_grad()
def propagate_folder(
    congealer: Congealer,
    root: str | Path,
    edit: Edit,
    out: str | Path,
    size: int = 256,
    image_size: int | None = None,
    batch_size: int = 8,
    cluster: int | None = None,
    flips: bool | None = None,
    iters: int | None = None,
    label_alpha: float = LABEL_ALPHA,
    point_radius: float = POINT_RADIUS,
    device: torch.device | str = "cpu",
) -> dict[str, Path]:
    """Propagate ``edit`` to every image of the folder ``root``; returns the paths written under
    ``out``. ``label_alpha`` draws label maps, ``point_radius`` keypoints: set for another kind of
    edit, they are refused."""
    for key, value, default, kind in (
        ("label_alpha", label_alpha, LABEL_ALPHA, "labels"),
        ("point_radius", point_radius, POINT_RADIUS, "keypoints"),
    ):
        if value != default and edit.kind != kind:
            raise ValueError(
                f"{key}={value} is ignored because only edit_type={kind} uses it and this edit "
                f"is edit_type={edit.kind}; drop it, or pass a {kind} edit"
            )
    if congealer.num_modes > 1 and cluster is None:
        raise ValueError(
            f"the congealer has {congealer.num_modes} modes and an edit belongs to the average "
            f"image of one of them: pass cluster=<0..{congealer.num_modes - 1}>, the mode it was "
            "drawn on (python -m gangealing.congeal ... cluster=k writes that average image)"
        )
    refuse_ignored_options(congealer, cluster, flips, iters)
    image_size = image_size or size
    dataset = ImageFolder(root, image_size)
    out = Path(out)
    congealer = congealer.to(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    records: dict[str, dict] = {}
    palette = default_palette()
    for start, batch in zip(range(0, len(dataset), batch_size), loader, strict=True):
        batch = batch.to(device)
        result = congealer(batch, cluster=cluster, output_size=size, iters=iters, flips=flips)
        names = [
            dataset.files[start + i].relative_to(dataset.root).with_suffix(".png")
            for i in range(batch.shape[0])
        ]
        if edit.kind == "overlay":
            edited = propagate_overlay(batch, result.grid, edit.overlay.to(batch))
            for name, image in zip(names, edited.cpu(), strict=True):
                save_png(image, out / "edited" / name)
            continue
        pixels = to_uint8(batch)
        if edit.kind == "labels":
            labels = propagate_labels(
                result.grid, edit.labels.to(device), (image_size,) * 2, edit.num_classes
            )
            labels = labels.masked_fill(labels < 0, NO_LABEL).cpu().numpy().astype(np.uint8)
            for name, label, image in zip(names, labels, pixels, strict=True):
                (out / "labels" / name).parent.mkdir(parents=True, exist_ok=True)
                (out / "overlays" / name).parent.mkdir(parents=True, exist_ok=True)
                label_png = Image.fromarray(label)
                label_png.putpalette(edit.palette.flatten().tolist())  # L -> P, indices kept
                label_png.save(out / "labels" / name)
                blended = _blend_labels(image, label, edit.palette, label_alpha)
                Image.fromarray(blended).save(out / "overlays" / name)
            continue
        points = propagate_keypoints(result.grid, edit.points.to(device), (image_size,) * 2)
        visible = ((points >= -0.5) & (points <= image_size - 0.5)).all(dim=-1)
        for i, name in enumerate(names):
            (out / "keypoints" / name).parent.mkdir(parents=True, exist_ok=True)
            drawn = _draw_points(
                pixels[i], points[i].cpu(), visible[i].cpu(), palette, point_radius
            )
            drawn.save(out / "keypoints" / name)
            records[str(name)] = {
                "keypoints": points[i].cpu().tolist(),
                "visible": visible[i].cpu().tolist(),
                "flipped": bool(result.flipped[i]),
            }
    paths = {"edited": out / "edited"}
    if edit.kind == "labels":
        paths = {"labels": out / "labels", "overlays": out / "overlays"}
    if edit.kind == "keypoints":
        record = {"image_size": image_size, "congealed_size": size, "images": records}
        write_json(record, out / "keypoints.json", indent=1)
        paths = {"keypoints": out / "keypoints", "json": out / "keypoints.json"}
    preview = _edited_target(congealer, edit, size, cluster, label_alpha, point_radius)
    if preview is not None:
        out.mkdir(parents=True, exist_ok=True)
        preview.save(out / "target.png")
        paths["target"] = out / "target.png"
    return paths


def _edited_target(
    congealer: Congealer,
    edit: Edit,
    size: int,
    cluster: int | None,
    label_alpha: float,
    point_radius: float,
) -> Image.Image | None:
    """The edit drawn in congealed space on the target mode G(c) (None without one)."""
    targets = congealer.target_images()
    if targets is None:
        return None
    target = targets[cluster or 0][None].float().cpu()
    target = F.interpolate(target, size=(size, size), mode="bilinear", antialias=True)
    if edit.kind == "overlay":
        alpha = edit.overlay[3:]
        composed = target[0] * (1 - alpha) + (edit.overlay[:3] * 2 - 1) * alpha
        return Image.fromarray(to_uint8(composed[None])[0])
    pixels = to_uint8(target)[0]
    if edit.kind == "labels":
        labels = edit.labels.numpy().astype(np.uint8)
        return Image.fromarray(_blend_labels(pixels, labels, edit.palette, label_alpha))
    visible = torch.ones(len(edit.points), dtype=torch.bool)
    return _draw_points(pixels, edit.points, visible, default_palette(), point_radius)
