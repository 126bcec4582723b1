#!/usr/bin/env python3
"""Check that a Hugging Face export (``coft export RUN --out DIR --format hf``) loaded with
``transformers`` alone reproduces ``coft predict``.

Run by hand (not in CI) with the project's Python venv:

    /work/venv/bin/python tools/check_hf_export.py DIR IMAGES [--run RUN] [--coft BIN]

It runs ``coft predict`` on the image folder IMAGES (``--model DIR``, or ``--run RUN`` to
predict with the run the export came from), computes the same probabilities with the snippet
of the README ("Exporting and predicting"): ``CLIPVisionModelWithProjection`` +
``CLIPImageProcessorPil`` + the heads, softmax of each member's logits, averaged) and prints
the largest absolute difference of any probability, and how many top-1 classes differ. The
exit status is 1 when the difference exceeds ``--tol`` (default 1e-4) or a class differs.

For information it also prints the difference with ``AutoImageProcessor``'s default
(torchvision-backed) processor, whose bicubic resize is not Pillow's.

JPEG decoders differ: Pillow (libjpeg-turbo) and coft (zune-jpeg, through the ``image``
crate) give a few pixels one level apart, which moves a probability by up to ~3e-3 on the
tiny test model. ``--via-png`` first decodes every image with Pillow and writes it as PNG to
a temporary folder that both sides then read, so the check compares the models and the
preprocessing alone.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from safetensors.torch import load_file
from transformers import (
    AutoImageProcessor,
    CLIPImageProcessorPil,
    CLIPVisionModelWithProjection,
)


def load_export(root: Path, processor_cls=CLIPImageProcessorPil):
    """The README's snippet, as functions: the members, the processor, the class names."""
    desc = json.loads((root / "ensemble.json").read_text())
    classes = (root / desc["classes"]).read_text().splitlines()
    members = []
    for name in desc["members"]:
        model = CLIPVisionModelWithProjection.from_pretrained(root / name).eval()
        head = load_file(root / name / desc["head"])  # weight [C, D], bias [C]
        members.append((model, head))
    processor = processor_cls.from_pretrained(root / desc["members"][0])
    return members, processor, classes


def open_rgb(path: Path) -> Image.Image:
    # As coft decodes: EXIF orientation applied, alpha dropped (not composited).
    return ImageOps.exif_transpose(Image.open(path)).convert("RGB")


@torch.no_grad()
def predict(members, processor, images: list[Image.Image]) -> torch.Tensor:
    pixels = processor(images=images, return_tensors="pt").pixel_values
    probs = 0
    for model, head in members:
        emb = F.normalize(model(pixel_values=pixels).image_embeds, dim=-1)
        logits = emb @ head["weight"].T + head["bias"]
        probs = probs + logits.softmax(dim=-1) / len(members)
    return probs


def default_coft() -> str:
    if os.environ.get("COFT_BIN"):
        return os.environ["COFT_BIN"]
    target = Path(os.environ.get("CARGO_TARGET_DIR", Path(__file__).resolve().parents[1] / "target"))
    built = target / "release" / "coft"
    return str(built) if built.is_file() else "coft"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("export", type=Path, help="folder written by `coft export --format hf`")
    ap.add_argument("images", type=Path, help="image folder (as `coft predict --images` reads it)")
    ap.add_argument("--run", type=Path, help="predict with this run instead of the export")
    ap.add_argument("--coft", default=default_coft(), help="coft binary (default: $COFT_BIN, target/release/coft, coft)")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--via-png", action="store_true", help="decode with Pillow and re-encode as PNG first")
    a = ap.parse_args()
    tmp = None
    if a.via_png:
        tmp = tempfile.TemporaryDirectory()
        src = a.images
        a.images = Path(tmp.name)
        exts = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
        for p in sorted(src.rglob("*")):
            if p.suffix.lower() in exts:
                q = (a.images / p.relative_to(src)).with_suffix(".png")
                q.parent.mkdir(parents=True, exist_ok=True)
                open_rgb(p).save(q)

    which = ["--run", str(a.run)] if a.run else ["--model", str(a.export)]
    cmd = [a.coft, "-q", "predict", *which, "--images", str(a.images), "--out", "-"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rows = list(csv.reader(io.StringIO(out)))
    header, rows = rows[0], rows[1:]
    coft_probs = torch.tensor([[float(x) for x in r[2:]] for r in rows], dtype=torch.float64)
    paths = [a.images / r[0] for r in rows]

    result = {}
    for label, cls in [("CLIPImageProcessorPil", CLIPImageProcessorPil), ("AutoImageProcessor", AutoImageProcessor)]:
        members, processor, classes = load_export(a.export, cls)
        assert header[2:] == classes, (header, classes)
        got = []
        for i in range(0, len(paths), a.batch):
            got.append(predict(members, processor, [open_rgb(p) for p in paths[i : i + a.batch]]))
        py = torch.cat(got).double()
        diff = (py - coft_probs).abs().max().item()
        flips = int((py.argmax(1) != coft_probs.argmax(1)).sum())
        result[label] = (diff, flips, type(processor).__name__)

    print(f"{len(paths)} images{' (via PNG)' if a.via_png else ''}, {len(classes)} classes, {len(members)} members; coft: {' '.join(cmd[1:])}")
    for label, (diff, flips, name) in result.items():
        print(f"  transformers + {name}: max |p_python - p_coft| = {diff:.3g}, top-1 differs on {flips}")
    diff, flips, _ = result["CLIPImageProcessorPil"]
    ok = diff <= a.tol and flips == 0
    print(f"{'OK' if ok else 'FAIL'}: {diff:.3g} {'<=' if diff <= a.tol else '>'} {a.tol:g}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
