"""ImageFolder-style loader: root/train/<class>/*.png and root/test/<class>/*.png, read with Pillow.

Class indices follow the sorted class-folder names of train/. Channels are auto-detected
(1 when every image is grayscale, else 3) unless given. Normalization uses the per-channel
mean / std of the training images unless given.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from prunekit.data.base import DATASETS, DatasetSplits, normalize_uint8
from prunekit import limits
from prunekit.errors import ConfigError, DataError, short

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".webp", ".tif", ".tiff"}
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def _list_split(split_dir: Path, classes: list[str] | None) -> tuple[list[str], list[tuple[Path, int]]]:
    """(class names, [(image path, class index)]) for one split; classes=None means train/ defines them."""
    is_train = classes is None
    if not split_dir.is_dir():
        raise DataError(f"missing folder {split_dir}; expected {split_dir}/<class>/<image files>")
    found = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if classes is None:
        classes = found
    elif set(found) - set(classes):
        extra = ", ".join(sorted(set(found) - set(classes)))
        raise DataError(f"{split_dir} has class folders not in train/: {extra}")
    if not classes:
        raise DataError(f"{split_dir} has no class sub-folders")
    items = []
    for index, name in enumerate(classes):
        folder = split_dir / name
        files = sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        for f in files:
            if not f.is_file():  # a FIFO would block the reader forever, a device never end
                raise DataError(f"{f} is not a regular file (a FIFO, device or folder); remove it from {folder}")
        if not files and is_train:
            raise DataError(f"class folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        items.extend((f, index) for f in files)
    return classes, items


def _load_image(path: Path, channels: int, size: tuple[int, int] | None) -> np.ndarray:
    """One image as a C x H x W uint8 array, converted to `channels` and resized to `size` (H, W)."""
    with _pillow_errors(path), Image.open(path) as img:
        _check_pixels(path, img)
        img = img.convert("L" if channels == 1 else "RGB")
    if size is not None and img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


@contextlib.contextmanager
def _pillow_errors(path: Path):
    """Map Pillow's failures, decompression bombs included, to DataError naming the file."""
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its pixel limit; a dataset image that big is refused too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"image {path} is too large to decode ({exc}); dataset images are small, "
                        "so this file is corrupt or hostile: remove it") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot read image {path}: {str(exc)[:200]}") from None


def _check_pixels(path: Path, img: Image.Image) -> None:
    """Refuse, from the header alone, an image that would decode to more than MAX_IMAGE_PIXELS."""
    width, height = img.size
    if width * height > limits.MAX_IMAGE_PIXELS:
        raise DataError(f"image {path} declares {width}x{height} pixels, more than the {limits.MAX_IMAGE_PIXELS} "
                        "a dataset image may have; the file is corrupt or hostile: remove it")


def _stack(items: list[tuple[Path, int]], channels: int, size: tuple[int, int] | None) -> np.ndarray:
    """Load every image; all must share one size (after resizing, when `size` is given)."""
    arrays = []
    for i, (path, _) in enumerate(items):
        arr = _load_image(path, channels, size)
        if i == 0:  # uint8 stack plus the float32 copy normalization makes
            limits.check_memory(5 * arr.nbytes * len(items), f"{len(items)} images of {arr.shape}",
                                "Pass a smaller image_size or use fewer images.", DataError)
        if arrays and arr.shape != arrays[0].shape:
            raise DataError(
                f"{path} is {arr.shape[1]}x{arr.shape[2]} but {items[0][0]} is"
                f" {arrays[0].shape[1]}x{arrays[0].shape[2]}; pass image_size=(H, W) to resize all images"
            )
        arrays.append(arr)
    return np.stack(arrays)


def _image_mode(path: Path) -> str:
    with _pillow_errors(path), Image.open(path) as img:  # lazy: reads the header only
        _check_pixels(path, img)
        return img.mode


@DATASETS.register("imagefolder")
def load_image_folder(
    data_dir: str | None = None,
    download: bool = False,
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> DatasetSplits:
    """Load root/train/<class>/* and root/test/<class>/* into memory (data_dir is the root)."""
    if not data_dir:
        raise ConfigError("dataset 'imagefolder' needs data_dir: a folder with train/<class>/, test/<class>/")
    if download:
        raise ConfigError("dataset 'imagefolder' cannot be downloaded; point data_dir at your images")
    if channels not in (None, 1, 3):
        raise ConfigError(f"imagefolder channels must be 1 or 3, got {channels}")
    size = (image_size, image_size) if isinstance(image_size, int) else image_size and tuple(image_size)
    if size is not None and (len(size) != 2 or not all(isinstance(v, int) and v >= 1 for v in size)):
        raise ConfigError(f"imagefolder image_size must be a positive int or [H, W], got {short(image_size)}")
    root = Path(data_dir)
    classes, train_items = _list_split(root / "train", None)
    _, test_items = _list_split(root / "test", classes)
    if channels is None:
        modes = {_image_mode(p) for p, _ in train_items + test_items}
        channels = 1 if modes <= _GRAY_MODES else 3
    # One stack for both splits, so a test image of another size is caught like a train one.
    both = _stack(train_items + test_items, channels, size)
    train_u8, test_u8 = both[: len(train_items)], both[len(train_items) :]
    for key, value in (("mean", mean), ("std", std)):
        if value is not None and len(value) != channels:
            raise ConfigError(f"imagefolder {key} {short(value)} has {len(value)} values but the images have "
                              f"{channels} channel(s); give one per channel")
    if std is not None and any(v <= 0 for v in std):
        raise ConfigError(f"imagefolder std {short(std)} must be positive")
    if mean is None or std is None:
        pixels = train_u8.astype(np.float64).transpose(1, 0, 2, 3).reshape(channels, -1) / 255.0
        mean = tuple(float(m) for m in pixels.mean(1)) if mean is None else mean
        std = tuple(max(float(s), 1e-6) for s in pixels.std(1)) if std is None else std
    train_x, test_x = normalize_uint8(train_u8, mean, std), normalize_uint8(test_u8, mean, std)
    return DatasetSplits(
        name="imagefolder",
        train_x=train_x,
        train_y=torch.tensor([c for _, c in train_items], dtype=torch.int64),
        test_x=test_x,
        test_y=torch.tensor([c for _, c in test_items], dtype=torch.int64),
        num_classes=len(classes),
        in_channels=channels,
        image_size=(int(train_x.shape[2]), int(train_x.shape[3])),
        description=f"image folder {root} ({len(classes)} classes: {', '.join(classes[:10])}"
        f"{', ...' if len(classes) > 10 else ''}); {len(train_items)} train / {len(test_items)} test;"
        f" normalized with mean {tuple(round(m, 4) for m in mean)} std {tuple(round(s, 4) for s in std)}",
    )
