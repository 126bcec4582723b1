#!/usr/bin/env python3
"""Reference outputs of torchvision's colour operations for coft's augmentations.

Run by hand (not in CI) with the project's Python venv:

    /work/venv/bin/python tools/ref_augment.py [--out tests/fixtures/augment/colour_ops.safetensors]

It writes one safetensors file (float32 CHW tensors, 3 x 12 x 16):

* ``input``: a seeded random uint8 image divided by 255 (``ToTensor``), with a few grey,
  black, white and tied-maximum pixels so that the HSV edge cases are exercised;
* ``brightness_<f>``, ``contrast_<f>``, ``saturation_<f>``, ``hue_<f>``: the
  ``torchvision.transforms.functional.adjust_*`` of ``input`` with factor ``f``;
* ``grayscale``: ``rgb_to_grayscale(input, num_output_channels=3)``;
* ``blur_k<k>_s<sigma>``: ``gaussian_blur(input, [k, k], [sigma, sigma])`` (reflect padding);
* ``jitter``: brightness 1.2, contrast 0.7, saturation 1.3, hue -0.08 applied in the order
  saturation, brightness, hue, contrast (``ColorJitter``'s permutation [2, 0, 3, 1]).

Factor names use ``m`` for a minus sign and ``p`` for the decimal point (``hue_m0p37``).
"""
import argparse
import os

import torch
import torchvision
import torchvision.transforms.functional as F
from safetensors.torch import save_file


def name(prefix, f):
    return f"{prefix}_{f}".replace("-", "m").replace(".", "p")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/augment/colour_ops.safetensors")
    a = ap.parse_args()
    g = torch.Generator().manual_seed(20240601)
    u8 = torch.randint(0, 256, (3, 12, 16), generator=g, dtype=torch.uint8)
    u8[:, 0, 0] = 0  # black
    u8[:, 0, 1] = 255  # white
    u8[:, 0, 2] = 77  # grey
    u8[:, 0, 3] = torch.tensor([200, 200, 10])  # r == g maximum
    u8[:, 0, 4] = torch.tensor([10, 200, 200])  # g == b maximum
    u8[:, 0, 5] = torch.tensor([200, 10, 200])  # r == b maximum
    u8[:, 0, 6] = torch.tensor([255, 0, 0])
    x = u8.float() / 255
    out = {"input": x}
    for f in [0.6, 1.3]:
        out[name("brightness", f)] = F.adjust_brightness(x, f)
    for f in [0.6, 1.5]:
        out[name("contrast", f)] = F.adjust_contrast(x, f)
    for f in [0.3, 1.4]:
        out[name("saturation", f)] = F.adjust_saturation(x, f)
    for f in [0.1, -0.37, 0.5]:
        out[name("hue", f)] = F.adjust_hue(x, f)
    out["grayscale"] = F.rgb_to_grayscale(x, num_output_channels=3).contiguous()
    for k, s in [(5, 1.3), (23, 2.0), (3, 0.1)]:
        out[name(f"blur_k{k}_s", s)] = F.gaussian_blur(x, [k, k], [s, s])
    y = F.adjust_saturation(x, 1.3)
    y = F.adjust_brightness(y, 1.2)
    y = F.adjust_hue(y, -0.08)
    y = F.adjust_contrast(y, 0.7)
    out["jitter"] = y
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, a.out,
              metadata={"torch": torch.__version__, "torchvision": torchvision.__version__})
    print(f"wrote {len(out)} tensors to {a.out}")


if __name__ == "__main__":
    main()
