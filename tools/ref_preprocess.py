#!/usr/bin/env python3
"""Reference fixtures for coft's image decoding and CLIP preprocessing.

Run by hand (not in CI) with the project's Python venv:

    /work/venv/bin/python tools/ref_preprocess.py [--out tests/fixtures/preprocess]

It writes, deterministically (seeded):

* ``images/``   small test images in many formats and modes;
* ``decoded/``  Pillow's decoded RGB (HWC uint8) for the lossy and odd formats,
                so a test can tell decoder differences from resize differences;
* ``ref/``      ``transformers.CLIPImageProcessorPil`` (the slow, PIL-based processor) output:
                ``<case>_s<S>_u8.npy``  (CHW uint8: resize + center crop, no rescale/normalise)
                ``<case>_s<S>_f32.npy`` (CHW float32: the full pixel_values) for S = 32;
* ``resize/``   plain ``PIL.Image.resize(..., BICUBIC, box=...)`` outputs (HWC uint8) that exercise
                the resampler with arbitrary output sizes and fractional source boxes, including
                Pillow 13's vertical-pass-first order (height reduced > 2x more than width);
* ``images/orient<k>_24x16.png`` + ``decoded/orient<k>.npy``: EXIF orientations 1-8 (PNG eXIf)
                and their ``exif_transpose`` result;
* ``norm_table.npy``  (3, 256) float32: the processor's rescale + normalise of every uint8 level;
* ``manifest.json``   what is where, plus the library versions used.

How each image is turned into the processor's RGB input (this is what coft's decoder does too):

* ``ImageOps.exif_transpose`` first (the HF processor ignores EXIF; coft applies it on purpose);
* ``Image.convert("RGB")``: alpha is dropped, not composited.  NB transformers 5.x's
  ``convert_to_rgb`` composites transparency onto white; transformers 4.x, OpenAI's ``clip`` and
  ``open_clip`` drop it.  coft drops it, so the RGB image is passed to the processor already
  converted and ``do_convert_rgb`` is a no-op (the RGB copy of a palette image also loses the
  ``transparency`` entry Pillow carries over, which transformers 5 would composite too).  The
  script prints how far apart the two are;
* 16-bit greyscale ("I;16"): Pillow's convert("RGB") clips every value above 255 to 255, which
  whitens real 16-bit images; coft keeps the high byte (v >> 8), which is also what Pillow does for
  16-bit RGB/RGBA PNGs.  The reference uses v >> 8 for this case.

The output size budget (the whole folder must stay under 2 MB) is checked at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import PIL
from PIL import Image, ImageDraw, ImageOps, features

import transformers
from transformers import CLIPImageProcessorPil

SEED = 20240611
SIZES = (32, 64)
BIG = 224
BIG_CASES = ("rgb_300x200", "rgb_400x300_blocky")
F32_SIZES = (32,)
# Lossless cases whose decoded RGB is stored as well (beyond the lossy and odd-mode ones).
DECODED_TOO = ("gif_3frames_60x40", "rgb16_48x40")
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def photo(w: int, h: int, rng: np.random.Generator, noise: float = 5.0) -> np.ndarray:
    """Photo-like RGB uint8 content: smooth gradients, texture, hard edges, noise, clipped areas."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    u = x / max(w - 1, 1)
    v = y / max(h - 1, 1)
    ph = rng.uniform(0, 2 * math.pi, size=3)
    r = 30 + 190 * u + 35 * np.sin(2 * math.pi * (2.5 * v + 0.7 * u) + ph[0])
    g = 50 + 150 * v + 30 * np.cos(2 * math.pi * (4 * u * v + 1.5 * u) + ph[1])
    b = 210 - 170 * u * v + 25 * np.sin(2 * math.pi * x / 6.3 + ph[2]) * np.cos(2 * math.pi * y / 4.7)
    img = np.stack([r, g, b], axis=-1)
    # fine texture (period ~2-3 px) that aliases if a resampler does not antialias
    img += 18 * np.sin(2 * math.pi * (x / 2.7 + y / 3.1))[..., None] * np.array([1.0, -0.6, 0.4])
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(5):
        x0, x1 = sorted(rng.integers(0, w, size=2))
        y0, y1 = sorted(rng.integers(0, h, size=2))
        colour = tuple(int(c) for c in rng.choice([0, 255, 128, 40, 220], size=3))
        if rng.random() < 0.5:
            draw.rectangle([x0, y0, x1, y1], fill=colour)
        else:
            draw.ellipse([x0, y0, x1, y1], fill=colour)
    # a pure black/white stripe: bicubic overshoot must be clipped to [0, 255]
    sx = int(rng.integers(0, max(w - 3, 1)))
    draw.rectangle([sx, 0, sx + 1, h - 1], fill=(255, 255, 255))
    draw.rectangle([sx + 2, 0, sx + 2, h - 1], fill=(0, 0, 0))
    arr = np.asarray(pil).astype(np.float64)
    arr += rng.normal(0.0, noise, size=arr.shape)
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def png_bytes(w: int, h: int, bit_depth: int, colour_type: int, rows: list[bytes]) -> bytes:
    """A minimal PNG writer (Pillow cannot write 16-bit RGB)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, colour_type, 0, 0, 0)
    raw = b"".join(b"\x00" + r for r in rows)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def make_images(img_dir: Path, rng: np.random.Generator) -> list[dict]:
    """Write the test images; return case descriptions."""
    cases: list[dict] = []

    def add(name: str, filename: str, kind: str, note: str) -> None:
        cases.append({"name": name, "file": f"images/{filename}", "kind": kind, "note": note})

    # -- RGB PNGs at odd sizes (exact: PNG decoding is lossless on both sides)
    # 40x150: tall enough (aspect > 2) for Pillow 13 to run the vertical pass first
    for w, h in [(97, 61), (61, 97), (300, 200), (33, 33), (20, 14), (1000, 37), (40, 150)]:
        name = f"rgb_{w}x{h}"
        Image.fromarray(photo(w, h, rng)).save(img_dir / f"{name}.png", optimize=True)
        add(name, f"{name}.png", "exact", "RGB PNG")
    # Downscaled at S=224. 4x4 blocks (nearest-neighbour upscale) keep the file small.
    name = "rgb_400x300_blocky"
    Image.fromarray(photo(100, 75, rng)).resize((400, 300), Image.Resampling.NEAREST).save(
        img_dir / f"{name}.png", optimize=True
    )
    add(name, f"{name}.png", "exact", "RGB PNG of 4x4 blocks, downscaled at S=224")

    base = photo(80, 50, rng)
    # -- greyscale, grey+alpha, RGBA, palette (with a transparent index)
    grey = Image.fromarray(base).convert("L")
    grey.save(img_dir / "grey_80x50.png")
    add("grey_80x50", "grey_80x50.png", "exact", "L PNG")

    alpha = Image.fromarray(photo(70, 90, rng)[..., 0])
    la = Image.merge("LA", [Image.fromarray(photo(70, 90, rng)).convert("L"), alpha])
    la.save(img_dir / "la_70x90.png")
    add("la_70x90", "la_70x90.png", "exact", "LA PNG, alpha dropped")

    rgba_rgb = Image.fromarray(photo(90, 70, rng))
    a = np.asarray(Image.fromarray(photo(90, 70, rng)).convert("L")).copy()
    a[:10, :] = 0  # fully transparent rows: their RGB must survive (dropped, not composited)
    rgba = rgba_rgb.copy()
    rgba.putalpha(Image.fromarray(a))
    rgba.save(img_dir / "rgba_90x70.png")
    add("rgba_90x70", "rgba_90x70.png", "exact", "RGBA PNG, alpha dropped")

    pal = Image.fromarray(photo(64, 48, rng)).quantize(colors=48, method=Image.Quantize.MEDIANCUT)
    pal.save(img_dir / "palette_64x48.png", transparency=0)
    add("palette_64x48", "palette_64x48.png", "exact", "P PNG with tRNS, transparency dropped")

    # -- 16-bit: greyscale (Pillow I;16) and RGB (written by hand)
    g16 = (np.asarray(Image.fromarray(photo(50, 40, rng)).convert("L")).astype(np.uint32) * 257).astype(np.uint16)
    g16 = np.clip(g16.astype(np.int32) + rng.integers(-200, 200, size=g16.shape), 0, 65535).astype(np.uint16)
    Image.fromarray(g16).save(img_dir / "grey16_50x40.png")
    add("grey16_50x40", "grey16_50x40.png", "exact", "16-bit grey PNG; reference uses v >> 8 (Pillow would clip)")

    rgb16 = photo(48, 40, rng).astype(np.uint32) * 257
    rgb16 = np.clip(rgb16.astype(np.int64) + rng.integers(-200, 200, size=rgb16.shape), 0, 65535).astype(">u2")
    rows = [rgb16[yy].tobytes() for yy in range(rgb16.shape[0])]
    (img_dir / "rgb16_48x40.png").write_bytes(png_bytes(48, 40, 16, 2, rows))
    add("rgb16_48x40", "rgb16_48x40.png", "exact", "16-bit RGB PNG; Pillow keeps the high byte")

    # -- other lossless containers
    Image.fromarray(photo(75, 50, rng)).save(img_dir / "webp_lossless_75x50.webp", lossless=True, quality=100)
    add("webp_lossless_75x50", "webp_lossless_75x50.webp", "exact", "lossless WebP")

    Image.fromarray(photo(45, 35, rng)).save(img_dir / "bmp_45x35.bmp")
    add("bmp_45x35", "bmp_45x35.bmp", "exact", "24-bit BMP")

    Image.fromarray(photo(55, 45, rng)).save(img_dir / "tiff_55x45.tif", compression="tiff_lzw")
    add("tiff_55x45", "tiff_55x45.tif", "exact", "LZW TIFF")

    # three frames; the first is used.  No transparency, full-canvas first frame.
    frames = [Image.fromarray(photo(60, 40, rng)).quantize(colors=64) for _ in range(3)]
    frames[0].save(img_dir / "gif_3frames_60x40.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    add("gif_3frames_60x40", "gif_3frames_60x40.gif", "exact", "GIF, 3 frames, first one used")

    # -- JPEGs (lossy: decoders may differ by a few levels)
    Image.fromarray(photo(120, 80, rng)).save(img_dir / "jpeg_baseline_120x80.jpg", quality=90)
    add("jpeg_baseline_120x80", "jpeg_baseline_120x80.jpg", "jpeg", "baseline JPEG 4:2:0")

    Image.fromarray(photo(120, 80, rng)).save(img_dir / "jpeg_444_120x80.jpg", quality=90, subsampling=0)
    add("jpeg_444_120x80", "jpeg_444_120x80.jpg", "jpeg", "baseline JPEG 4:4:4 (no chroma upsampling)")

    Image.fromarray(photo(120, 80, rng)).save(
        img_dir / "jpeg_progressive_120x80.jpg", quality=90, progressive=True
    )
    add("jpeg_progressive_120x80", "jpeg_progressive_120x80.jpg", "jpeg", "progressive JPEG 4:2:0")

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    Image.fromarray(photo(96, 64, rng)).save(img_dir / "jpeg_exif6_96x64.jpg", quality=90, exif=exif.tobytes())
    add("jpeg_exif6_96x64", "jpeg_exif6_96x64.jpg", "jpeg", "JPEG, EXIF orientation 6 (stored 96x64, shown 64x96)")

    Image.fromarray(photo(64, 48, rng)).convert("L").save(img_dir / "jpeg_grey_64x48.jpg", quality=90)
    add("jpeg_grey_64x48", "jpeg_grey_64x48.jpg", "jpeg", "greyscale JPEG")

    Image.fromarray(photo(40, 30, rng)).convert("CMYK").save(img_dir / "jpeg_cmyk_40x30.jpg", quality=90)
    add("jpeg_cmyk_40x30", "jpeg_cmyk_40x30.jpg", "jpeg", "CMYK JPEG (Adobe, inverted)")

    return cases


def normalise(u8: np.ndarray) -> np.ndarray:
    """The processor's rescale + normalise: x * (1/255) in float64, cast to float32, then
    (x - mean) / std in float32."""
    x = (u8.astype(np.float64) * (1 / 255)).astype(np.float32)
    return (x - np.array(MEAN, np.float32)[:, None, None]) / np.array(STD, np.float32)[:, None, None]


def pil_rgb(path: Path) -> tuple[Image.Image, str]:
    """The RGB image coft's decoder is meant to produce, the Pillow way."""
    im = Image.open(path)
    mode = im.mode
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(im).astype(np.uint16) >> 8
        im = Image.fromarray(arr.astype(np.uint8), mode="L")
    rgb = im.convert("RGB")
    # convert("RGB") keeps a palette image's transparency as an RGB colour in info, and
    # transformers 5's convert_to_rgb would then composite that colour onto white.
    rgb.info.pop("transparency", None)
    return rgb, mode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "tests/fixtures/preprocess"))
    args = ap.parse_args()
    out = Path(args.out)
    for sub in ("images", "decoded", "ref", "resize"):
        d = out / sub
        d.mkdir(parents=True, exist_ok=True)
        for f in d.iterdir():
            f.unlink()

    rng = np.random.default_rng(SEED)
    cases = make_images(out / "images", rng)

    procs = {
        s: CLIPImageProcessorPil(size={"shortest_edge": s}, crop_size={"height": s, "width": s})
        for s in (*SIZES, BIG)
    }
    for p in procs.values():
        assert p.resample == Image.Resampling.BICUBIC and p.do_convert_rgb and p.do_center_crop
        assert tuple(p.image_mean) == MEAN and tuple(p.image_std) == STD

    for case in cases:
        rgb, mode = pil_rgb(out / case["file"])
        case["pil_mode"] = mode
        case["width"], case["height"] = rgb.size
        if case["kind"] != "exact" or mode not in ("RGB", "RGBA", "L", "LA", "P") or case["name"] in DECODED_TOO:
            dec = f"decoded/{case['name']}.npy"
            np.save(out / dec, np.asarray(rgb))
            case["decoded"] = dec
        outputs = {}
        sizes = list(SIZES) + ([BIG] if case["name"] in BIG_CASES else [])
        for s in sizes:
            u8 = procs[s](images=rgb, do_rescale=False, do_normalize=False, return_tensors="np")["pixel_values"][0]
            assert u8.dtype == np.uint8 and u8.shape == (3, s, s), (u8.dtype, u8.shape)
            entry = {"u8": f"ref/{case['name']}_s{s}_u8.npy"}
            np.save(out / entry["u8"], u8)
            full = procs[s](images=rgb, return_tensors="np")["pixel_values"][0]
            assert full.dtype == np.float32 and full.shape == (3, s, s)
            # consistency: the float output is exactly the normalised uint8 output
            assert np.array_equal(full, normalise(u8)), case["name"]
            if s in F32_SIZES:
                entry["f32"] = f"ref/{case['name']}_s{s}_f32.npy"
                np.save(out / entry["f32"], full)
            outputs[str(s)] = entry
        case["outputs"] = outputs

        # Informational: transformers 5.x composites alpha onto white instead of dropping it.
        im0 = Image.open(out / case["file"])
        if "A" in im0.getbands() or im0.info.get("transparency") is not None:
            hf = procs[32](images=im0, return_tensors="np")["pixel_values"][0]
            ours = procs[32](images=rgb, return_tensors="np")["pixel_values"][0]
            print(f"  {case['name']}: transformers-5 white compositing would differ by max {np.abs(hf - ours).max():.3f}")

    # Normalisation of every uint8 level, as the processor computes it (rescale in float64, then
    # cast to float32, then (x - mean) / std in float32).
    levels = np.broadcast_to(np.arange(256, dtype=np.uint8).reshape(16, 16), (3, 16, 16)).copy()
    p = procs[32]
    norm = p(images=levels, do_resize=False, do_center_crop=False, input_data_format="channels_first",
             return_tensors="np")["pixel_values"][0]
    norm = norm.reshape(3, 256).astype(np.float32)
    np.save(out / "norm_table.npy", norm)
    assert np.array_equal(normalise(levels).reshape(3, 256), norm), "normalisation formula drifted"

    # EXIF orientations 1-8 on a small lossless PNG (eXIf chunk): decoded RGB after exif_transpose.
    orientation_cases = []
    base = Image.fromarray(photo(24, 16, rng))
    for k in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = k
        f = f"images/orient{k}_24x16.png"
        base.save(out / f, exif=exif.tobytes())
        rgb, _ = pil_rgb(out / f)
        dec = f"decoded/orient{k}.npy"
        np.save(out / dec, np.asarray(rgb))
        orientation_cases.append({"orientation": k, "file": f, "decoded": dec, "width": rgb.size[0], "height": rgb.size[1]})

    # Plain resizes with fractional boxes (the kernel reused by training augmentations).
    resize_cases = []
    src_specs = [
        ("rgb_97x61", (13, 71), None),
        ("rgb_97x61", (37, 29), (10.5, 3.25, 80.75, 50.0)),
        ("rgb_97x61", (50, 50), (40.2, 20.7, 52.9, 33.1)),
        ("rgb_300x200", (64, 48), (3.5, 12.0, 290.25, 199.5)),
        ("rgb_97x61", (97, 61), None),
        ("rgb_97x61", (97, 61), (0.5, 0.0, 96.5, 61.0)),
        ("rgb_97x61", (40, 61), (0.0, 0.0, 40.0, 61.0)),
        ("rgb_33x33", (1, 1), None),
        ("rgb_33x33", (97, 5), None),
        ("rgb_97x61", (90, 6), (10.5, 3.25, 80.75, 50.0)),
        ("rgb_40x150", (17, 20), (2.5, 7.0, 39.0, 149.5)),
        ("rgb_1000x37", (31, 37), None),
    ]
    by_name = {c["name"]: c for c in cases}
    for i, (src, (w, h), box) in enumerate(src_specs):
        rgb, _ = pil_rgb(out / by_name[src]["file"])
        res = rgb.resize((w, h), Image.Resampling.BICUBIC, box=box)
        f = f"resize/{i:02d}_{src}_{w}x{h}.npy"
        np.save(out / f, np.asarray(res))
        resize_cases.append({"source": by_name[src]["file"], "width": w, "height": h, "box": box, "expected": f})

    manifest = {
        "generator": "tools/ref_preprocess.py",
        "seed": SEED,
        "versions": {
            "transformers": transformers.__version__,
            "pillow": PIL.__version__,
            "numpy": np.__version__,
            "libjpeg_turbo": features.version("libjpeg_turbo"),
        },
        "processor": "transformers.CLIPImageProcessorPil(size={'shortest_edge': S}, crop_size={'height': S, 'width': S})",
        "mean": MEAN,
        "std": STD,
        "cases": cases,
        "resize_cases": resize_cases,
        "orientation_cases": orientation_cases,
        "norm_table": "norm_table.npy",
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")

    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{len(cases)} cases, {len(resize_cases)} resize cases, {total / 1024:.0f} KiB in {out}")
    assert total < 1_950_000, "fixture folder over its 2 MB budget"


if __name__ == "__main__":
    main()
