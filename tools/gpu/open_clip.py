"""Stand-in for `open_clip.tokenize`, put on PYTHONPATH by tools/gpu_bench.sh only where open_clip
is not installed (the GPU machine has torch and transformers, no open_clip, and no network).

For timing only: one token per word and one for the final '.', between the start and end
tokens, zero-padded to 77, so a prompt has the real prompt's length to within a token or two
and its end token where tools/bench_steps_torch.py looks for it (the largest id); the ids
themselves are not CLIP's BPE (the compute does not depend on them).
"""
import torch

SOT, EOT, WORD, DOT = 49406, 49407, 320, 269


def tokenize(texts, context_length=77):
    out = torch.zeros(len(texts), context_length, dtype=torch.long)
    for i, t in enumerate(texts):
        words = t.rstrip(".").split()
        ids = [SOT] + [WORD] * len(words) + ([DOT] if t.endswith(".") else []) + [EOT]
        ids = ids[:context_length]
        out[i, : len(ids)] = torch.tensor(ids)
    return out
