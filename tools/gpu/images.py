"""Synthetic class folders for tools/gpu_bench.sh's end-to-end run: N images of SIZE px in 10
classes (a coloured square on grey noise; the class is the colour), as 24-bit BMP (numpy only).

    python tools/gpu/images.py DIR N SIZE
"""
import os
import struct
import sys

import numpy as np

COLOURS = {
    "red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 50, 220), "yellow": (230, 220, 30),
    "purple": (140, 40, 200), "orange": (240, 140, 20), "cyan": (30, 210, 220),
    "pink": (240, 120, 180), "brown": (120, 70, 30), "white": (245, 245, 245),
}


def bmp(path, rgb):
    h, w, _ = rgb.shape
    row = (w * 3 + 3) // 4 * 4
    body = np.zeros((h, row), np.uint8)
    body[:, : w * 3] = rgb[::-1, :, ::-1].reshape(h, w * 3)  # bottom-up rows, BGR
    size = 54 + body.size
    head = b"BM" + struct.pack("<IHHI", size, 0, 0, 54)
    head += struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, body.size, 2835, 2835, 0, 0)
    with open(path, "wb") as f:
        f.write(head + body.tobytes())


def main():
    root, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = np.random.default_rng(0)
    names = list(COLOURS)
    made = 0
    for i in range(n):
        name = names[i % len(names)]
        d = os.path.join(root, name)
        os.makedirs(d, exist_ok=True)
        p = os.path.join(d, f"{i:05d}.bmp")
        if os.path.exists(p):
            continue
        img = rng.integers(70, 170, (size, size, 3), dtype=np.int32)
        s = int(rng.integers(size // 4, size // 2))
        x, y = rng.integers(0, size - s, 2)
        img[y : y + s, x : x + s] = np.array(COLOURS[name]) + rng.integers(-25, 26, 3)
        bmp(p, np.clip(img, 0, 255).astype(np.uint8))
        made += 1
    print(f"images: {n} in {len(names)} classes at {size} px under {root} ({made} written)")


if __name__ == "__main__":
    main()
