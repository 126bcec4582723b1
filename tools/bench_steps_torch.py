"""PyTorch side of `coft bench perf`: the training steps of CoFT / CoFT+ at ViT shapes with
random weights, exactly as coft runs them, one configuration per process.

Steps (all batch --batch, C = --classes):
  embed    image features (inference), vision tower + projection.
  phase1   frozen CLIP; CoOp contexts (M = 16, shared) for the positive and negative prompts of
           all C classes spliced into the token embeddings of the text model (one batched pass
           over 2C prompts), deep VPT (20 tokens per layer) in the vision tower; L1 + L2;
           SGD (momentum 0.9, weight decay 5e-4) on the prompts. Optimisers use fused=True.
  phase2   full fine-tuning of the vision tower + projection + linear head over the normalised
           embedding, cross-entropy, SGD.
  moco     phase2 plus CoFT+ momentum contrast: a second view through a momentum copy of the
           encoder (no grad), InfoNCE against a full queue of 8192 keys (tau' 0.2), EMA update
           (mu 0.999) after the optimiser step, keys enqueued.
  sgd, adamw   the optimiser update alone over every parameter of the image encoder (+ head),
           gradients already in place.

Prints one JSON line: {"img_per_s", "step_s", "peak_rss_mib", "iters"} (img_per_s = batch /
median step time; for sgd/adamw it is updates per second). --device cuda runs on the GPU
under bf16 autocast and adds "peak_gpu_mib".
  python tools/bench_steps_torch.py --step phase1 --shape ViT-B/16 --batch 32 --threads 2
"""
import argparse, copy, json, resource, statistics, time

import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel

from bench_torch import SHAPES


def tokenize(classes, n_ctx):
    import open_clip

    prefix = " ".join(["X"] * n_ctx)
    ids = open_clip.tokenize([f"{prefix} {c}." for c in classes])
    eot = ids.argmax(dim=-1)  # the end token has the largest id
    length = int(eot.max()) + 1  # coft cuts the batch to the longest prompt's end token
    return ids[:, :length]


def l1(s_pos, labels, scale):
    return F.cross_entropy(s_pos * scale, labels)


def l2(s_pos, s_neg, labels, comp, scale):
    z = (s_pos - s_neg) * scale
    on_label = F.logsigmoid(z.gather(1, labels[:, None]))
    on_comp = F.logsigmoid(-z.gather(1, comp[:, None]))
    return -(on_label + on_comp).mean()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--step", required=True, choices=["embed", "phase1", "phase2", "moco", "sgd", "adamw"])
    ap.add_argument("--shape", default="ViT-B/16")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3, help="timed steps after --warmup")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--queue", type=int, default=8192)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda (bf16 autocast)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    s = SHAPES[a.shape]
    cfg = CLIPConfig(text_config=dict(s["text"], hidden_act="quick_gelu"),
                     vision_config=dict(s["vision"], hidden_act="quick_gelu"),
                     projection_dim=s["projection_dim"])
    dev = torch.device(a.device)
    model = CLIPModel(cfg).to(dev)
    model.train(False)  # dropout is 0 in CLIP; keep eval semantics as coft has no dropout
    B, C = a.batch, a.classes
    size = s["vision"]["image_size"]
    d_proj = s["projection_dim"]
    labels = (torch.arange(B) % C).to(dev)
    step = None
    prepare = None  # untimed work before each step

    if a.step == "phase1":
        for p in model.parameters():
            p.requires_grad_(False)
        tm, vm = model.text_model, model.vision_model
        n_ctx, n_vpt = 16, 20
        ids = tokenize([f"object number {i}" for i in range(C)], n_ctx)
        ids2 = torch.cat([ids, ids], 0).to(dev)  # positive then negative prompts, one pass
        tw, vw = s["text"]["hidden_size"], s["vision"]["hidden_size"]
        layers = vm.encoder.layers
        ctx_pos = (torch.randn(1, n_ctx, tw, device=dev) * 0.02).requires_grad_()
        ctx_neg = (torch.randn(1, n_ctx, tw, device=dev) * 0.02).requires_grad_()
        vpt = (torch.randn(len(layers), n_vpt, vw, device=dev) * 0.02).requires_grad_()
        pos_emb = tm.embeddings.position_embedding.weight

        def splice_ctx(_mod, _inp, out):  # CoOp: positions 1..1+M become the contexts
            ctx = torch.cat([ctx_pos.expand(C, -1, -1), ctx_neg.expand(C, -1, -1)], 0)
            return torch.cat([out[:, :1], ctx + pos_emb[1:1 + n_ctx], out[:, 1 + n_ctx:]], 1)

        tm.embeddings.register_forward_hook(splice_ctx)
        n_tok = (size // s["vision"]["patch_size"]) ** 2 + 1

        def first_prompts(_mod, args):  # layer-0 prompts join before ln_pre
            h = args[0]
            return (torch.cat([h, vpt[0].expand(h.shape[0], -1, -1)], 1),) + args[1:]

        vm.pre_layrnorm.register_forward_pre_hook(first_prompts)
        for i in range(1, len(layers)):
            def deep(_mod, args, i=i):  # deep VPT: replace the previous layer's prompt outputs
                h = args[0]
                h = torch.cat([h[:, :n_tok], vpt[i].expand(h.shape[0], -1, -1)], 1)
                return (h,) + args[1:]
            layers[i].register_forward_pre_hook(deep)
        opt = torch.optim.SGD([ctx_pos, ctx_neg, vpt], lr=0.01, momentum=0.9, weight_decay=5e-4,
                              fused=True)
        scale = model.logit_scale.exp().item()
        gen = torch.Generator().manual_seed(0)

        def step(x):
            v = F.normalize(model.visual_projection(vm(pixel_values=x).pooler_output), dim=-1)
            t = F.normalize(model.text_projection(tm(input_ids=ids2).pooler_output), dim=-1)
            sp, sn = v @ t[:C].T, v @ t[C:].T
            comp = (labels + torch.randint(1, C, (B,), generator=gen).to(dev)) % C
            loss = l1(sp, labels, scale) + l2(sp, sn, labels, comp, scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss
    elif a.step != "embed":
        vision, proj = model.vision_model, model.visual_projection
        del model.text_model
        head = torch.nn.Linear(d_proj, C).to(dev)
        params = list(vision.parameters()) + list(proj.parameters()) + list(head.parameters())
        # fused=True: PyTorch's fastest update (4x its default for-loop on this CPU).
        if a.step == "adamw":
            opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
        else:
            opt = torch.optim.SGD(params, lr=1e-4, momentum=0.9, weight_decay=5e-4, fused=True)

        def embed(vis, prj, x):
            return F.normalize(prj(vis(pixel_values=x).pooler_output), dim=-1)

        if a.step in ("sgd", "adamw"):
            base = [torch.randn_like(p) * 1e-3 for p in params]

            def prepare():
                # Fresh gradient buffers every step, copied on all threads outside the timed
                # region: what coft's side gets (its update consumes its gradients), and what
                # training gives both (a new .grad from every backward pass).
                for p, g in zip(params, base):
                    p.grad = g.clone()

            def step(_x):
                opt.step()
            B = 1  # report updates per second
        elif a.step == "phase2":
            def step(x):
                loss = F.cross_entropy(head(embed(vision, proj, x)), labels)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                return loss
        else:
            key_vision, key_proj = copy.deepcopy(vision), copy.deepcopy(proj)
            key_params = list(key_vision.parameters()) + list(key_proj.parameters())
            for p in key_params:
                p.requires_grad_(False)
            q_params = list(vision.parameters()) + list(proj.parameters())
            queue = F.normalize(torch.randn(a.queue, d_proj, device=dev), dim=-1)
            ptr = [0]

            def step(x):
                xq, xk = x, x.flip(-1)  # two views
                v = embed(vision, proj, xq)
                ce = F.cross_entropy(head(v), labels)
                with torch.no_grad():
                    k = embed(key_vision, key_proj, xk)
                l_pos = (v * k).sum(1, keepdim=True)
                l_neg = v @ queue.T
                logits = torch.cat([l_pos, l_neg], 1) / 0.2
                cont = F.cross_entropy(logits, torch.zeros(B, dtype=torch.long, device=dev))
                loss = ce + cont
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    torch._foreach_mul_(key_params, 0.999)
                    torch._foreach_add_(key_params, q_params, alpha=0.001)
                    i = ptr[0]
                    queue[i:i + B] = k
                    ptr[0] = (i + B) % a.queue
                return loss

    if a.step == "embed":
        def step(x):
            with torch.inference_mode():
                return model.visual_projection(model.vision_model(pixel_values=x).pooler_output)
    cuda = dev.type == "cuda"
    times = []
    for i in range(a.warmup + a.steps):
        x = torch.randn(a.batch, 3, size, size, device=dev)
        if prepare is not None:
            prepare()
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
            step(x)
        if cuda:
            torch.cuda.synchronize()
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"img_per_s": B / med, "step_s": med, "peak_rss_mib": rss, "iters": len(times),
           "torch": torch.__version__}
    if cuda:
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(out))


if __name__ == "__main__":
    main()
