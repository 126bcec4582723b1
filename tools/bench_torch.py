"""PyTorch side of `coft bench`: the same step on the same machine, one config per process.

Prints one JSON line: {"img_per_s": median images/s, "peak_rss_mib": ..., "iters": ...}.
Run by `coft bench` (pass --python to it); runnable alone:
  python tools/bench_torch.py --step embed --shape ViT-B/16 --batch 8 --threads 2 --seconds 20
"""
import argparse, json, resource, statistics, time

import torch
from transformers import CLIPConfig, CLIPModel

SHAPES = {
    "ViT-B/32": dict(vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                 num_attention_heads=12, image_size=224, patch_size=32),
                     text=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                               num_attention_heads=8), projection_dim=512),
    "ViT-B/16": dict(vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                 num_attention_heads=12, image_size=224, patch_size=16),
                     text=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                               num_attention_heads=8), projection_dim=512),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--step", default="embed", choices=["embed"])
    ap.add_argument("--shape", default="ViT-B/16")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--warmup", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    s = SHAPES[a.shape]
    cfg = CLIPConfig(text_config=dict(s["text"], hidden_act="quick_gelu"),
                     vision_config=dict(s["vision"], hidden_act="quick_gelu"),
                     projection_dim=s["projection_dim"])
    model = CLIPModel(cfg).eval()
    x = torch.randn(a.batch, 3, 224, 224)
    times = []
    with torch.inference_mode():
        for _ in range(a.warmup):
            model.get_image_features(pixel_values=x)
        start = time.perf_counter()
        while time.perf_counter() - start < a.seconds or len(times) < 3:
            t0 = time.perf_counter()
            model.get_image_features(pixel_values=x)
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"img_per_s": a.batch / med, "peak_rss_mib": rss, "iters": len(times),
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
