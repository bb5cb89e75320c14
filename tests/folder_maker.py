"""A small generated ImageFolder for the data tests: root/train/<class>/*.png|jpg and root/test/<class>/."""

from pathlib import Path

import numpy as np
from PIL import Image


def make_folder(root: Path, classes: int = 10, train: int = 20, test: int = 4, size: int = 32, seed: int = 0) -> Path:
    """Images whose mean colour depends on the class (learnable), half PNG and half JPEG."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("test", test)):
        for c in range(classes):
            d = root / split / f"class{c:02d}"
            d.mkdir(parents=True, exist_ok=True)
            base = np.array([(c * 37) % 256, (c * 91) % 256, (c * 151) % 256], dtype=np.float64)
            for i in range(count):
                img = np.clip(base + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
                suffix = ".png" if i % 2 == 0 else ".jpg"
                Image.fromarray(img).save(d / f"{i:04d}{suffix}")
    return root
