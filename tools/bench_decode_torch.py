"""PyTorch side of `coft bench decode`: decode + CLIP preprocessing the way a torchvision
training script does it, over the same files, on the same machine, in the same run.

Per image: PIL `Image.open` + `convert("RGB")`, then (`--transform inference`) `Resize(224,
BICUBIC)` (shorter side), `CenterCrop(224)`, or (`train`) `RandomResizedCrop(224, scale=(0.5, 1),
BICUBIC)` + `RandomHorizontalFlip()`, or (`moco`) MoCo v2's augmentation (crop scale 0.2-1,
`RandomApply([ColorJitter(0.4, 0.4, 0.4, 0.1)], 0.8)`, `RandomGrayscale(0.2)`,
`RandomApply([GaussianBlur(23, (0.1, 2))], 0.5)`, flip); then `ToTensor()`,
`Normalize(CLIP mean, CLIP std)`, batched by a
`torch.utils.data.DataLoader` with `--workers` worker processes (persistent, so their start-up
is not timed). One warm-up pass, then `--passes` timed passes; prints one JSON line:
{"img_per_s": images / median pass time, "peak_rss_mib": main process, "iters": passes}.

Run by `coft bench decode --python PY`; runnable alone:
  python tools/bench_decode_torch.py --list paths.txt --workers 2 --batch 32 --passes 3
"""
import argparse, json, resource, statistics, time

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


class Files(Dataset):
    def __init__(self, paths, tf):
        self.paths, self.tf = paths, tf

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        with Image.open(self.paths[i]) as im:
            return self.tf(im.convert("RGB"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--list", required=True, help="file with one image path per line")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--transform", default="inference", choices=["inference", "train", "moco"])
    a = ap.parse_args()
    with open(a.list) as f:
        paths = [l.rstrip("\n") for l in f if l.strip()]
    bicubic = T.InterpolationMode.BICUBIC
    geometry = {
        "inference": [T.Resize(224, interpolation=bicubic), T.CenterCrop(224)],
        "train": [T.RandomResizedCrop(224, scale=(0.5, 1.0), interpolation=bicubic),
                  T.RandomHorizontalFlip()],
        "moco": [T.RandomResizedCrop(224, scale=(0.2, 1.0), interpolation=bicubic),
                 T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
                 T.RandomGrayscale(p=0.2),
                 T.RandomApply([T.GaussianBlur(23, sigma=(0.1, 2.0))], p=0.5),
                 T.RandomHorizontalFlip()],
    }[a.transform]
    tf = T.Compose(geometry + [T.ToTensor(), T.Normalize(MEAN, STD)])
    loader = DataLoader(Files(paths, tf), batch_size=a.batch, shuffle=False,
                        num_workers=a.workers, persistent_workers=a.workers > 0)
    times = []
    for p in range(a.passes + 1):
        t0 = time.perf_counter()
        n = 0
        for x in loader:
            n += x.shape[0]
        assert n == len(paths), (n, len(paths))
        if p > 0:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"img_per_s": len(paths) / med, "peak_rss_mib": rss, "iters": len(times),
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
