# Reference numbers for tests/train_utils.rs: torch.optim.SGD / AdamW on fixed gradients.
import torch
torch.set_printoptions(precision=10)
W0 = [[0.1, -0.2], [0.3, 0.4], [-0.5, 0.6]]
b0 = [0.05, -0.05]
GW = [
    [[0.5, -1.0], [0.25, 2.0], [-0.75, 0.1]],
    [[-0.3, 0.8], [0.6, -1.5], [0.2, 0.4]],
    [[0.1, 0.1], [-0.9, 0.7], [1.2, -0.6]],
]
GB = [[0.3, -0.2], [-0.1, 0.5], [0.25, 0.05]]

def run(make, lrs):
    w = torch.tensor(W0, dtype=torch.float32, requires_grad=True)
    b = torch.tensor(b0, dtype=torch.float32, requires_grad=True)
    opt = make([w, b])
    for k, lr in enumerate(lrs):
        for g in opt.param_groups:
            g["lr"] = lr
        w.grad = torch.tensor(GW[k], dtype=torch.float32)
        b.grad = torch.tensor(GB[k], dtype=torch.float32)
        opt.step()
    return w.detach().flatten().tolist(), b.detach().tolist()

def fmt(name, xs):
    # numpy prints the shortest decimal that round-trips the f32.
    import numpy as np
    print(f"const {name}: [f32; {len(xs)}] = [{', '.join(str(np.float32(x)) for x in xs)}];")

print("torch", torch.__version__)
w, b = run(lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01), [0.1, 0.05, 0.02])
fmt("SGD_W", w); fmt("SGD_B", b)
w, b = run(lambda p: torch.optim.AdamW(p, lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1), [0.01, 0.005, 0.002])
fmt("ADAMW_W", w); fmt("ADAMW_B", b)
