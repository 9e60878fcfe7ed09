"""The evaluation transform that published ImageNet accuracies are measured with: the shorter side resized,
then the centre square cropped (torchvision's `ImageClassification`, timm's `resize_size` and `crop_pct`).

Pillow does the resizing, because that is what the publishers' own transforms run on a PIL image
(torchvision's `F.resize` calls `PIL.Image.resize`), so kcnn's pixels are theirs, not an approximation.
The mean and std are not applied here: pretrained kcnn models hold them inside (`include_preprocessing`).
"""

from __future__ import annotations

import dataclasses

from kcnn.errors import InvalidArgumentError

INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


@dataclasses.dataclass(frozen=True)
class EvalTransform:
    """Resize the shorter side to `resize_size` (the longer one in proportion, truncated as torchvision
    does), then crop the centre `crop_size` square. Call it on a PIL image or an (H, W, 3) uint8 array;
    it returns (crop_size, crop_size, 3) uint8."""

    resize_size: int
    crop_size: int
    interpolation: str = "bilinear"

    def __post_init__(self):
        if self.interpolation not in INTERPOLATIONS:
            raise InvalidArgumentError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}. "
                                       f"Received: interpolation={self.interpolation!r}")
        if self.crop_size > self.resize_size:
            raise InvalidArgumentError(f"The centre crop ({self.crop_size}) cannot be larger than the resized "
                                       f"shorter side ({self.resize_size}).")

    def __call__(self, image):
        import numpy as np  # here: kcnn.weights is read by `kcnn list`, which needs no NumPy
        from PIL import Image

        if not isinstance(image, Image.Image):
            image = Image.fromarray(np.asarray(image, dtype=np.uint8))
        image = image.convert("RGB")
        width, height = image.size
        if width <= height:  # torchvision's _compute_resized_output_size
            size = (self.resize_size, int(self.resize_size * height / width))
        else:
            size = (int(self.resize_size * width / height), self.resize_size)
        if size != image.size:
            image = image.resize(size, getattr(Image.Resampling, self.interpolation.upper()))
        left = int(round((size[0] - self.crop_size) / 2.0))  # torchvision's center_crop rounds the offset
        top = int(round((size[1] - self.crop_size) / 2.0))
        image = image.crop((left, top, left + self.crop_size, top + self.crop_size))
        return np.asarray(image, dtype=np.uint8)

    def describe(self) -> str:
        return f"resize {self.resize_size} {self.interpolation}, centre crop {self.crop_size}"
