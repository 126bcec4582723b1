#!/usr/bin/env python3
"""Generate the tiny-CLIP fixtures that coft's Rust tests compare against.

Run by hand from the repository root (no network, no hub access needed):

    /work/venv/bin/python tools/make_fixtures.py

Everything is rebuilt from fixed seeds into ``tests/fixtures/clip_tiny/``:

* ``hf/config.json`` + ``hf/model.safetensors`` -- a tiny random
  ``transformers.CLIPModel`` (text: 32 wide, 2 layers, 4 heads; vision: 48 wide,
  2 layers, 4 heads, 32x32 images, 8x8 patches; projection 24) in Hugging Face
  layout, float16.  Every LayerNorm weight/bias and every bias is perturbed
  away from its 1/0 init so a port that ignores one of them is caught, and all
  parameters are rounded to float16 *before* any reference is computed, so the
  f16 files hold exactly the weights the references used.
* ``openai.safetensors`` + ``openai_config.json`` -- the same weights in the
  OpenAI / open_clip layout (float16), verified by loading them into a real
  ``open_clip.model.CLIP`` and comparing its embeddings with HF's.
* ``images/img_{0..7}.png`` -- 8 seeded, photo-like RGB images of varied sizes.
* ``reference.safetensors`` (float32, int64 token ids) + ``reference.json``
  (metadata) -- pixel values from the PIL-based CLIP image processor, image
  and text embeddings, zero-shot logits with template ensembling, and the two
  parameter-efficient hooks the method needs (CoOp text context and deep /
  shallow visual prompts, VPT), with gradients w.r.t. the learnable prompts.

The hooks are implemented with explicit tensor math (``ln``, ``attention``,
``block``, ``text_forward``, ``vision_forward`` below) that reads the HF
module's weights.  That code is meant to double as the specification the Rust
port follows; it is checked against HF's own forward (zero-length prompts) to
1e-6 and the gradients are checked with float64 ``gradcheck``.

Conventions worth knowing (all verified here against transformers' CLIP):

* LayerNorm: biased variance, eps 1e-5, affine.  quick_gelu(x) = x*sigmoid(1.702x).
* Attention: q/k/v/out Linear layers with bias, scores scaled by head_dim**-0.5
  (applied to q.k^T, not to q), softmax in float32.  The text tower adds a
  causal mask (position i attends to j <= i); the vision tower has no mask.
* Pre-LN blocks: x += attn(ln1(x)); x += mlp(ln2(x)).
* Text: token_embedding + position_embedding (positions 0..76), blocks,
  final_layer_norm on every position, pool the position of the FIRST
  eos token (id 49407) -- with open_clip tokenisation that is also the argmax
  of the ids -- then text_projection (Linear, no bias).
* Vision: conv 8x8 stride 8 (no bias) -> patches flattened row-major
  (patch index = row*4 + col), [CLS, patches] + position_embedding, then
  ``pre_layrnorm`` (sic, HF's spelling) on every token, blocks, then
  ``post_layernorm`` only on the pooled CLS token, then visual_projection.
  HF's ``vision_model(...).last_hidden_state`` is BEFORE post_layernorm,
  whereas the text ``last_hidden_state`` is AFTER final_layer_norm.
* Zero-shot: logits = exp(logit_scale) * normalize(img) @ normalize(cls).T.
"""

import hashlib
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import open_clip  # noqa: E402
import safetensors.torch  # noqa: E402
import transformers  # noqa: E402
from transformers import CLIPConfig, CLIPModel  # noqa: E402
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "tests", "fixtures", "clip_tiny")

# ---------------------------------------------------------------- constants
SEED_MODEL = 0  # torch seed for CLIPModel init
SEED_PERTURB = 1  # LayerNorm / bias perturbation
SEED_IMAGES = 2  # numpy seed for the synthetic images
SEED_COOP = 3  # coop_ctx and coop_w
SEED_VPT = 4  # vpt_prompts and vpt_w

SOT, EOT = 49406, 49407
CONTEXT_LENGTH = 77

TEXT_CFG = dict(
    vocab_size=49408,
    hidden_size=32,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    eos_token_id=EOT,
    bos_token_id=SOT,
    pad_token_id=0,
    projection_dim=24,
)
VISION_CFG = dict(
    hidden_size=48,
    intermediate_size=192,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_channels=3,
    image_size=32,
    patch_size=8,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    projection_dim=24,
)
PROJECTION_DIM = 24
LOGIT_SCALE_INIT = 2.6592  # HF default, ~ln(1/0.07)

# open_clip config describing the same architecture.
OPENAI_CONFIG = {
    "embed_dim": PROJECTION_DIM,
    "quick_gelu": True,
    "vision_cfg": {
        "image_size": 32,
        "layers": 2,
        "width": 48,
        "head_width": 12,  # 48 / 4 heads
        "mlp_ratio": 4.0,  # 192 / 48
        "patch_size": 8,
    },
    "text_cfg": {
        "context_length": CONTEXT_LENGTH,
        "vocab_size": 49408,
        "width": 32,
        "heads": 4,
        "layers": 2,
        "mlp_ratio": 4.0,  # 128 / 32
    },
}

# (width, height) of the generated images; chosen so that the shortest-edge
# resize exercises floor() of the long edge (e.g. 40x30 -> 42x32, not 43x32),
# up-scaling (17x23) and odd centre-crop offsets.
IMAGE_SIZES = [(32, 32), (40, 30), (30, 50), (64, 48), (17, 23), (100, 80), (45, 33), (77, 120)]

CLASS_NAMES = ["dog", "cat", "red car", "café au lait", "yin_yang", "airplane"]
TEMPLATES = ["a photo of a {}.", "a blurry photo of the {}.", "itap of a {}."]

COOP_N_CTX = 4
COOP_PROMPT = " ".join(["X"] * COOP_N_CTX) + " {}."
VPT_N_TOKENS = 3
INIT_STD = 0.02

TOL_HAND_VS_HF = 1e-6
TOL_OPENCLIP_VS_HF = 1e-5


# ---------------------------------------------------------------- helpers
def check(cond, msg):
    if not cond:
        raise SystemExit(f"CHECK FAILED: {msg}")
    print(f"  ok: {msg}")


def maxdiff(a, b):
    return (a.detach().double() - b.detach().double()).abs().max().item()


def normalize(x):
    return x / x.norm(dim=-1, keepdim=True)


# ------------------------------------------------------- explicit CLIP math
def ln_explicit(x, w, b, eps):
    """LayerNorm spelled out: biased variance over the last dim."""
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def ln(x, mod):
    """== ln_explicit(x, mod.weight, mod.bias, mod.eps); torch's kernel is used
    so the hand-run path matches HF bit for bit (the explicit formula differs
    by a few ulp, ~1e-6 absolute on activations of size ~4)."""
    return F.layer_norm(x, (x.shape[-1],), mod.weight, mod.bias, mod.eps)


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def attention(x, attn, n_heads, causal):
    b, t, d = x.shape
    hd = d // n_heads

    def heads(y):
        return y.view(b, t, n_heads, hd).transpose(1, 2)  # [b, h, t, hd]

    q = heads(F.linear(x, attn.q_proj.weight, attn.q_proj.bias))
    k = heads(F.linear(x, attn.k_proj.weight, attn.k_proj.bias))
    v = heads(F.linear(x, attn.v_proj.weight, attn.v_proj.bias))
    s = (q @ k.transpose(-1, -2)) * hd**-0.5
    if causal:
        future = torch.ones(t, t, dtype=torch.bool).triu(1)
        s = s.masked_fill(future, float("-inf"))
    p = torch.softmax(s, dim=-1)
    o = (p @ v).transpose(1, 2).reshape(b, t, d)
    return F.linear(o, attn.out_proj.weight, attn.out_proj.bias)


def block(x, layer, n_heads, causal):
    x = x + attention(ln(x, layer.layer_norm1), layer.self_attn, n_heads, causal)
    h = ln(x, layer.layer_norm2)
    h = F.linear(quick_gelu(F.linear(h, layer.mlp.fc1.weight, layer.mlp.fc1.bias)), layer.mlp.fc2.weight, layer.mlp.fc2.bias)
    return x + h


def text_forward(model, input_ids, ctx=None):
    """Text tower; with ``ctx`` [n_ctx, D] the token embeddings at positions
    1..=n_ctx (right after SOT) are replaced by ctx (CoOp).  Returns
    (projected embeddings [B, P] unnormalised, last hidden after final LN)."""
    tm = model.text_model
    b, t = input_ids.shape
    x = tm.embeddings.token_embedding.weight[input_ids]  # [B, T, D]
    if ctx is not None:
        n = ctx.shape[0]
        x = torch.cat([x[:, :1], ctx.unsqueeze(0).expand(b, -1, -1), x[:, 1 + n :]], dim=1)
    x = x + tm.embeddings.position_embedding.weight[:t]
    for layer in tm.encoder.layers:
        x = block(x, layer, tm.config.num_attention_heads, causal=True)
    x = ln(x, tm.final_layer_norm)
    eot_pos = (input_ids == EOT).int().argmax(dim=-1)  # first EOT
    pooled = x[torch.arange(b), eot_pos]
    return F.linear(pooled, model.text_projection.weight), x


def vision_forward(model, pixel_values, prompts=None, deep=False):
    """Vision tower with optional visual prompts.

    ``prompts``: [L_p, N, D].  Layer-0 prompts prompts[0] are appended after
    [CLS, patches] (after position embeddings, before pre_layrnorm, which they
    also go through).  If ``deep``, before every layer i >= 1 the last N tokens
    are dropped and prompts[i] appended raw (no LayerNorm).  If not deep, the
    layer-0 prompt tokens simply stay in the sequence.  Returns (projected
    embeddings [B, P] unnormalised, last hidden state before post_layernorm)."""
    vm = model.vision_model
    emb = vm.embeddings
    b = pixel_values.shape[0]
    d = emb.class_embedding.shape[0]
    patches = F.conv2d(pixel_values, emb.patch_embedding.weight, stride=emb.patch_size)  # [B, D, g, g]
    patches = patches.flatten(2).transpose(1, 2)  # [B, g*g, D], row-major patch order
    x = torch.cat([emb.class_embedding.view(1, 1, d).expand(b, 1, d), patches], dim=1)
    x = x + emb.position_embedding.weight
    n_p = 0
    if prompts is not None:
        n_p = prompts.shape[1]
        x = torch.cat([x, prompts[0].unsqueeze(0).expand(b, -1, -1)], dim=1)
    x = ln(x, vm.pre_layrnorm)
    for i, layer in enumerate(vm.encoder.layers):
        if prompts is not None and deep and i > 0:
            x = torch.cat([x[:, : x.shape[1] - n_p], prompts[i].unsqueeze(0).expand(b, -1, -1)], dim=1)
        x = block(x, layer, vm.config.num_attention_heads, causal=False)
    pooled = ln(x[:, 0], vm.post_layernorm)
    return F.linear(pooled, model.visual_projection.weight), x


# ---------------------------------------------------------------- model
def build_model():
    config = CLIPConfig(
        text_config=TEXT_CFG,
        vision_config=VISION_CFG,
        projection_dim=PROJECTION_DIM,
        logit_scale_init_value=LOGIT_SCALE_INIT,
    )
    torch.manual_seed(SEED_MODEL)
    model = CLIPModel._from_config(config, attn_implementation="eager", dtype=torch.float32)
    model.eval()
    g = torch.Generator().manual_seed(SEED_PERTURB)
    n_ln, n_bias = 0, 0
    with torch.no_grad():
        lns = {name for name, mod in model.named_modules() if isinstance(mod, torch.nn.LayerNorm)}
        for name, p in model.named_parameters():
            owner, _, leaf = name.rpartition(".")
            if owner in lns and leaf == "weight":
                p.add_(0.1 * torch.randn(p.shape, generator=g))
                n_ln += 1
            elif leaf == "bias":
                p.add_(0.05 * torch.randn(p.shape, generator=g))
                n_bias += 1
        # Round every parameter through float16 so the f16 files are exact.
        for p in model.parameters():
            p.copy_(p.half().float())
    for p in model.parameters():
        p.requires_grad_(False)
    print(f"model: perturbed {n_ln} LayerNorm weights and {n_bias} biases; rounded all params to f16")
    return config, model


def hf_to_openai(sd):
    """HF CLIPModel state dict -> OpenAI / open_clip names."""
    out = {}

    def blocks(hf_prefix, oa_prefix, n_layers):
        for i in range(n_layers):
            h = f"{hf_prefix}.encoder.layers.{i}"
            o = f"{oa_prefix}.resblocks.{i}"
            for hn, on in (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2")):
                out[f"{o}.{on}.weight"] = sd[f"{h}.{hn}.weight"]
                out[f"{o}.{on}.bias"] = sd[f"{h}.{hn}.bias"]
            out[f"{o}.attn.in_proj_weight"] = torch.cat(
                [sd[f"{h}.self_attn.{n}_proj.weight"] for n in "qkv"], dim=0
            )
            out[f"{o}.attn.in_proj_bias"] = torch.cat([sd[f"{h}.self_attn.{n}_proj.bias"] for n in "qkv"], dim=0)
            out[f"{o}.attn.out_proj.weight"] = sd[f"{h}.self_attn.out_proj.weight"]
            out[f"{o}.attn.out_proj.bias"] = sd[f"{h}.self_attn.out_proj.bias"]
            out[f"{o}.mlp.c_fc.weight"] = sd[f"{h}.mlp.fc1.weight"]
            out[f"{o}.mlp.c_fc.bias"] = sd[f"{h}.mlp.fc1.bias"]
            out[f"{o}.mlp.c_proj.weight"] = sd[f"{h}.mlp.fc2.weight"]
            out[f"{o}.mlp.c_proj.bias"] = sd[f"{h}.mlp.fc2.bias"]

    v = "vision_model"
    out["visual.conv1.weight"] = sd[f"{v}.embeddings.patch_embedding.weight"]
    out["visual.class_embedding"] = sd[f"{v}.embeddings.class_embedding"]
    out["visual.positional_embedding"] = sd[f"{v}.embeddings.position_embedding.weight"]
    out["visual.ln_pre.weight"] = sd[f"{v}.pre_layrnorm.weight"]
    out["visual.ln_pre.bias"] = sd[f"{v}.pre_layrnorm.bias"]
    blocks(v, "visual.transformer", VISION_CFG["num_hidden_layers"])
    out["visual.ln_post.weight"] = sd[f"{v}.post_layernorm.weight"]
    out["visual.ln_post.bias"] = sd[f"{v}.post_layernorm.bias"]
    out["visual.proj"] = sd["visual_projection.weight"].t()
    t = "text_model"
    out["token_embedding.weight"] = sd[f"{t}.embeddings.token_embedding.weight"]
    out["positional_embedding"] = sd[f"{t}.embeddings.position_embedding.weight"]
    blocks(t, "transformer", TEXT_CFG["num_hidden_layers"])
    out["ln_final.weight"] = sd[f"{t}.final_layer_norm.weight"]
    out["ln_final.bias"] = sd[f"{t}.final_layer_norm.bias"]
    out["text_projection"] = sd["text_projection.weight"].t()
    out["logit_scale"] = sd["logit_scale"]
    return {k: v.contiguous() for k, v in out.items()}


# ---------------------------------------------------------------- images
def make_image(rng, w, h):
    """Photo-like: smooth 2-D colour gradient + a few soft shapes + noise."""
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    c0, c1, c2 = rng.uniform(0, 255, size=(3, 3))
    img = c0 * (1 - xx)[..., None] + c1 * xx[..., None]
    img = 0.6 * img + 0.4 * (c2 * yy[..., None] + img * (1 - yy[..., None]))
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(pil)
    for _ in range(rng.integers(2, 5)):
        x0, x1 = sorted(rng.integers(0, w, size=2))
        y0, y1 = sorted(rng.integers(0, h, size=2))
        col = tuple(int(c) for c in rng.integers(0, 256, size=3))
        if rng.random() < 0.5:
            draw.ellipse([x0, y0, x1 + 1, y1 + 1], fill=col)
        else:
            draw.rectangle([x0, y0, x1, y1], fill=col)
    arr = np.asarray(pil).astype(np.float64) + rng.normal(0, 8, size=(h, w, 3))
    return Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), "RGB")


# ---------------------------------------------------------------- main
def main():
    torch.set_num_threads(1)
    os.makedirs(os.path.join(OUT, "hf"), exist_ok=True)
    os.makedirs(os.path.join(OUT, "images"), exist_ok=True)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, open_clip {open_clip.__version__}")

    config, model = build_model()
    logit_scale = model.logit_scale.item()

    # ---- weights, HF layout
    print("writing HF weights")
    # config.json describes the float16 file; the references are float32.
    for c in (config, config.text_config, config.vision_config):
        c.dtype = "float16"
    config.architectures = ["CLIPModel"]
    config.save_pretrained(os.path.join(OUT, "hf"))
    sd = {k: v.detach().clone() for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    hf_path = os.path.join(OUT, "hf", "model.safetensors")
    safetensors.torch.save_file({k: v.half().contiguous() for k, v in sd.items()}, hf_path, metadata={"format": "pt"})

    # ---- weights, OpenAI layout
    print("writing OpenAI/open_clip weights")
    oa = hf_to_openai(sd)
    oa_path = os.path.join(OUT, "openai.safetensors")
    safetensors.torch.save_file({k: v.half() for k, v in oa.items()}, oa_path, metadata={"format": "pt"})
    with open(os.path.join(OUT, "openai_config.json"), "w") as f:
        json.dump(OPENAI_CONFIG, f, indent=2)
        f.write("\n")

    # ---- images and pixel values
    print("images")
    rng = np.random.default_rng(SEED_IMAGES)
    image_files = []
    for i, (w, h) in enumerate(IMAGE_SIZES):
        name = f"img_{i}.png"
        make_image(rng, w, h).save(os.path.join(OUT, "images", name))
        image_files.append(name)
    images = [Image.open(os.path.join(OUT, "images", n)).convert("RGB") for n in image_files]
    processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"].float()
    check(tuple(pixel_values.shape) == (8, 3, 32, 32), "pixel_values shape [8,3,32,32]")

    # ---- texts
    texts = [tpl.format(c) for c in CLASS_NAMES for tpl in TEMPLATES]  # class-major
    input_ids = open_clip.tokenize(texts, context_length=CONTEXT_LENGTH).long()
    for r in input_ids:
        eots = (r == EOT).nonzero().flatten().tolist()
        assert r[0] == SOT and len(eots) == 1, r
        assert int(r.argmax()) == eots[0] and bool((r[eots[0] + 1 :] == 0).all()), r
    check(True, "all 18 prompts: SOT first, a single EOT == argmax(ids) (the pooled position), zero padding after")

    # ---- HF reference forward
    print("HF reference forward")
    with torch.no_grad():
        vout = model.get_image_features(pixel_values=pixel_values, return_dict=True)
        image_embeds_raw = vout.pooler_output
        vision_last_hidden = vout.last_hidden_state
        tout = model.get_text_features(input_ids=input_ids, return_dict=True)
        text_embeds_raw = tout.pooler_output
        text_last_hidden = tout.last_hidden_state
        # cross-check with the top-level forward
        full = model(input_ids=input_ids, pixel_values=pixel_values)
    image_embeds = normalize(image_embeds_raw)
    text_embeds = normalize(text_embeds_raw)
    check(maxdiff(full.image_embeds, image_embeds) < 1e-6, "CLIPModel.forward image_embeds == normalize(get_image_features)")
    check(maxdiff(full.text_embeds, text_embeds) < 1e-6, "CLIPModel.forward text_embeds == normalize(get_text_features)")

    class_embeds = normalize(text_embeds.view(len(CLASS_NAMES), len(TEMPLATES), -1).mean(dim=1))
    zs_logits = math.exp(logit_scale) * image_embeds @ class_embeds.t()
    zs_probs = zs_logits.softmax(dim=-1)
    single = text_embeds.view(len(CLASS_NAMES), len(TEMPLATES), -1)[:, 0]
    zs_logits_single = math.exp(logit_scale) * image_embeds @ single.t()
    zs_probs_single = zs_logits_single.softmax(dim=-1)
    check(maxdiff(full.logits_per_image, math.exp(logit_scale) * image_embeds @ text_embeds.t()) < 1e-4,
          "logits_per_image == exp(logit_scale) * img @ txt.T")

    # ---- hand-run path vs HF (zero-length prompts)
    print("hand-run path vs HF")
    with torch.no_grad():
        h_txt, h_txt_last = text_forward(model, input_ids)
        h_img, h_img_last = vision_forward(model, pixel_values)
        h_img0, _ = vision_forward(model, pixel_values, prompts=torch.zeros(2, 0, 48), deep=True)
        h_img0s, _ = vision_forward(model, pixel_values, prompts=torch.zeros(1, 0, 48), deep=False)
        h_txt0, _ = text_forward(model, input_ids, ctx=torch.zeros(0, 32))
    hand_diffs = {
        "text_embeds_raw": maxdiff(h_txt, text_embeds_raw),
        "text_last_hidden": maxdiff(h_txt_last, text_last_hidden),
        "text_embeds_raw_ctx0": maxdiff(h_txt0, text_embeds_raw),
        "image_embeds_raw": maxdiff(h_img, image_embeds_raw),
        "vision_last_hidden": maxdiff(h_img_last, vision_last_hidden),
        "image_embeds_raw_vpt0_deep": maxdiff(h_img0, image_embeds_raw),
        "image_embeds_raw_vpt0_shallow": maxdiff(h_img0s, image_embeds_raw),
    }
    for k, v in hand_diffs.items():
        check(v < TOL_HAND_VS_HF, f"hand {k} max|diff| {v:.2e} < {TOL_HAND_VS_HF}")
    lnm = model.text_model.final_layer_norm
    probe = torch.randn(64, 32, generator=torch.Generator().manual_seed(99)) * 3 + 1
    d_ln = maxdiff(ln_explicit(probe, lnm.weight, lnm.bias, lnm.eps), ln(probe, lnm))
    check(d_ln < 1e-5, f"explicit LayerNorm formula == torch LayerNorm ({d_ln:.2e})")

    # ---- CoOp
    print("CoOp")
    coop_texts = [COOP_PROMPT.format(c) for c in CLASS_NAMES]
    coop_input_ids = open_clip.tokenize(coop_texts, context_length=CONTEXT_LENGTH).long()
    x_id = coop_input_ids[0, 1].item()
    check(bool((coop_input_ids[:, 1 : 1 + COOP_N_CTX] == x_id).all()), f"CoOp placeholders at positions 1..={COOP_N_CTX} (token {x_id})")
    g = torch.Generator().manual_seed(SEED_COOP)
    coop_ctx = INIT_STD * torch.randn(COOP_N_CTX, 32, generator=g)
    coop_w = torch.randn(len(CLASS_NAMES), PROJECTION_DIM, generator=g)
    with torch.no_grad():
        x_ctx = model.text_model.embeddings.token_embedding.weight[x_id].expand(COOP_N_CTX, -1)
        a, _ = text_forward(model, coop_input_ids, ctx=x_ctx)
        b = model.get_text_features(input_ids=coop_input_ids, return_dict=True).pooler_output
    check(maxdiff(a, b) < TOL_HAND_VS_HF, f"CoOp with ctx = embedding('X') equals HF on coop ids ({maxdiff(a, b):.2e})")
    ctx = coop_ctx.clone().requires_grad_(True)
    coop_raw, _ = text_forward(model, coop_input_ids, ctx=ctx)
    coop_text_embeds = normalize(coop_raw)
    loss_t = (coop_text_embeds * coop_w).sum()
    (coop_grad_ctx,) = torch.autograd.grad(loss_t, ctx)

    # ---- VPT
    print("VPT")
    g = torch.Generator().manual_seed(SEED_VPT)
    n_vl = VISION_CFG["num_hidden_layers"]
    vpt_prompts = INIT_STD * torch.randn(n_vl, VPT_N_TOKENS, 48, generator=g)
    vpt_w = torch.randn(8, PROJECTION_DIM, generator=g)
    pr = vpt_prompts.clone().requires_grad_(True)
    vpt_raw, _ = vision_forward(model, pixel_values, prompts=pr, deep=True)
    vpt_image_embeds = normalize(vpt_raw)
    loss_v = (vpt_image_embeds * vpt_w).sum()
    (vpt_grad,) = torch.autograd.grad(loss_v, pr)
    pr_s = vpt_prompts[:1].clone().requires_grad_(True)
    vpt_s_raw, _ = vision_forward(model, pixel_values, prompts=pr_s, deep=False)
    vpt_shallow_image_embeds = normalize(vpt_s_raw)
    loss_vs = (vpt_shallow_image_embeds * vpt_w).sum()
    (vpt_shallow_grad,) = torch.autograd.grad(loss_vs, pr_s)
    check(maxdiff(vpt_image_embeds, image_embeds) > 1e-4, "deep VPT changes the image embeddings")
    check(maxdiff(vpt_shallow_image_embeds, vpt_image_embeds) > 1e-6, "shallow VPT differs from deep VPT")

    # ---- gradient checks in float64
    print("float64 gradient checks")
    m64 = CLIPModel._from_config(config, attn_implementation="eager", dtype=torch.float64)
    m64.load_state_dict({k: v.double() for k, v in model.state_dict().items()}, strict=False)
    m64.eval()
    for p in m64.parameters():
        p.requires_grad_(False)
    pv64 = pixel_values.double()

    def f_coop(c):
        return (normalize(text_forward(m64, coop_input_ids, ctx=c)[0]) * coop_w.double()).sum()

    def f_vpt(p):
        return (normalize(vision_forward(m64, pv64, prompts=p, deep=True)[0]) * vpt_w.double()).sum()

    def f_vpt_s(p):
        return (normalize(vision_forward(m64, pv64, prompts=p, deep=False)[0]) * vpt_w.double()).sum()

    grad_diffs = {}
    for name, fn, x0, g32 in (
        ("coop_grad_ctx", f_coop, coop_ctx, coop_grad_ctx),
        ("vpt_grad", f_vpt, vpt_prompts, vpt_grad),
        ("vpt_shallow_grad", f_vpt_s, vpt_prompts[:1], vpt_shallow_grad),
    ):
        x64 = x0.double().clone().requires_grad_(True)
        check(torch.autograd.gradcheck(fn, (x64,), eps=1e-6, atol=1e-6, rtol=1e-4), f"{name}: float64 gradcheck (finite differences)")
        (g64,) = torch.autograd.grad(fn(x64), x64)
        rel = maxdiff(g32, g64) / g64.abs().max().item()
        grad_diffs[name] = {"max_abs_f32_vs_f64": maxdiff(g32, g64), "max_abs_grad": g64.abs().max().item(), "rel": rel}
        check(rel < 1e-4, f"{name}: f32 autograd vs f64 max|diff|/max|g| = {rel:.2e}")

    # ---- reload checks: HF folder and open_clip
    print("reload checks")
    re_hf = CLIPModel.from_pretrained(os.path.join(OUT, "hf"), dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        ri = re_hf.get_image_features(pixel_values=pixel_values, return_dict=True).pooler_output
        rt = re_hf.get_text_features(input_ids=input_ids, return_dict=True).pooler_output
        check(maxdiff(ri, image_embeds_raw) == 0 and maxdiff(rt, text_embeds_raw) == 0,
              "CLIPModel.from_pretrained(hf/) reproduces the references exactly")
        check(abs(re_hf.logit_scale.item() - logit_scale) == 0, "logit_scale round-trips")

    oc = open_clip.model.CLIP(
        embed_dim=OPENAI_CONFIG["embed_dim"],
        vision_cfg=OPENAI_CONFIG["vision_cfg"],
        text_cfg=OPENAI_CONFIG["text_cfg"],
        quick_gelu=OPENAI_CONFIG["quick_gelu"],
    )
    loaded = safetensors.torch.load_file(oa_path)
    missing, unexpected = oc.load_state_dict({k: v.float() for k, v in loaded.items()}, strict=True)
    oc.eval()
    with torch.no_grad():
        oi = oc.encode_image(pixel_values)
        ot = oc.encode_text(input_ids)
    oc_diffs = {
        "image_embeds_raw": maxdiff(oi, image_embeds_raw),
        "text_embeds_raw": maxdiff(ot, text_embeds_raw),
        "image_embeds": maxdiff(normalize(oi), image_embeds),
        "text_embeds": maxdiff(normalize(ot), text_embeds),
    }
    for k, v in oc_diffs.items():
        check(v < TOL_OPENCLIP_VS_HF, f"open_clip {k} vs HF max|diff| {v:.2e} < {TOL_OPENCLIP_VS_HF}")
    check(abs(oc.logit_scale.item() - logit_scale) == 0, "open_clip logit_scale == HF logit_scale")

    # ---- write references
    print("writing references")
    ref = {
        "pixel_values": pixel_values,
        "image_embeds": image_embeds,
        "image_embeds_raw": image_embeds_raw,
        "vision_last_hidden": vision_last_hidden,
        "input_ids": input_ids,
        "text_embeds": text_embeds,
        "text_embeds_raw": text_embeds_raw,
        "text_last_hidden": text_last_hidden,
        "class_embeds": class_embeds,
        "zs_logits": zs_logits,
        "zs_probs": zs_probs,
        "zs_logits_single": zs_logits_single,
        "zs_probs_single": zs_probs_single,
        "coop_input_ids": coop_input_ids,
        "coop_ctx": coop_ctx,
        "coop_w": coop_w,
        "coop_text_embeds": coop_text_embeds,
        "coop_grad_ctx": coop_grad_ctx,
        "vpt_prompts": vpt_prompts,
        "vpt_w": vpt_w,
        "vpt_image_embeds": vpt_image_embeds,
        "vpt_grad": vpt_grad,
        "vpt_shallow_image_embeds": vpt_shallow_image_embeds,
        "vpt_shallow_grad": vpt_shallow_grad,
    }
    ref = {k: (v.detach().long() if v.dtype == torch.int64 else v.detach().float()).contiguous() for k, v in ref.items()}
    safetensors.torch.save_file(ref, os.path.join(OUT, "reference.safetensors"), metadata={"format": "pt"})

    def resized_size(w, h, s=32):
        # transformers get_resize_output_image_size: short side -> s, long side -> int(s * long / short) (floor)
        if w <= h:
            return s, int(s * h / w)
        return int(s * w / h), s

    meta = {
        "generator": "tools/make_fixtures.py",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "open_clip": open_clip.__version__},
        "seeds": {"model": SEED_MODEL, "perturb": SEED_PERTURB, "images": SEED_IMAGES, "coop": SEED_COOP, "vpt": SEED_VPT},
        "weights": {
            "hf": "hf/model.safetensors (float16, HF CLIPModel names, no position_ids)",
            "openai": "openai.safetensors (float16, OpenAI/open_clip names; in_proj = cat[q,k,v] on dim 0; visual.proj and text_projection = HF weight transposed, [width, proj])",
            "note": "all parameters rounded to float16 before computing references; references are float32, eager attention",
        },
        "config": {
            "text": TEXT_CFG,
            "vision": VISION_CFG,
            "projection_dim": PROJECTION_DIM,
            "logit_scale_init_value": LOGIT_SCALE_INIT,
        },
        "logit_scale": logit_scale,
        "logit_scale_exp": math.exp(logit_scale),
        "images": {
            "files": image_files,
            "sizes_wh": [list(s) for s in IMAGE_SIZES],
            "resized_wh": [list(resized_size(w, h)) for w, h in IMAGE_SIZES],
            "processor": {
                "class": "CLIPImageProcessorPil (transformers 5 PIL backend; CLIPImageProcessor is the torchvision one)",
                "convert_rgb": True,
                "resize": "shortest_edge 32, long edge int(32*long/short) (floor); PIL Image.resize BICUBIC on uint8, reducing_gap None",
                "center_crop": "32x32, top=(h-32)//2, left=(w-32)//2",
                "rescale": 1 / 255,
                "image_mean": list(processor.image_mean),
                "image_std": list(processor.image_std),
                "layout": "pixel_values[n, c, y, x], RGB",
            },
        },
        "class_names": CLASS_NAMES,
        "templates": TEMPLATES,
        "texts": texts,
        "texts_order": "class-major: texts[c * n_templates + t] = templates[t].format(class_names[c])",
        "tokenizer": "open_clip.tokenize (OpenAI BPE, lower-cased, ftfy/whitespace cleaned): [SOT=49406, ids..., EOT=49407, 0...], length 77",
        "text_pooling": "first position where id == eos_token_id 49407 (== argmax of ids for OpenAI tokenisation)",
        "zero_shot": {
            "class_embeds": "normalize(mean over templates of normalized text_embeds)",
            "zs_logits": "exp(logit_scale) * image_embeds @ class_embeds.T",
            "zs_probs": "softmax(zs_logits, -1)",
            "zs_logits_single": "as zs_logits but with only the first template (no ensembling, one normalisation)",
        },
        "coop": {
            "prompt": COOP_PROMPT,
            "texts": coop_texts,
            "n_ctx": COOP_N_CTX,
            "placeholder_token_id": x_id,
            "replaced_positions": list(range(1, 1 + COOP_N_CTX)),
            "ctx_init": f"N(0, {INIT_STD}) seed {SEED_COOP}, then coop_w ~ N(0,1) from the same generator",
            "forward": "token_embedding(ids) with positions 1..=n_ctx replaced by coop_ctx (shared by all classes) -> + position_embedding -> causal blocks -> final_layer_norm -> pool first EOT -> text_projection -> L2 normalize",
            "loss": "loss_t = sum(coop_text_embeds * coop_w); coop_grad_ctx = d loss_t / d coop_ctx",
        },
        "vpt": {
            "n_tokens": VPT_N_TOKENS,
            "prompts_init": f"N(0, {INIT_STD}) seed {SEED_VPT} shape [layers, tokens, 48], then vpt_w ~ N(0,1) [8,24] from the same generator",
            "deep": "x = [CLS, 16 patches] + pos_emb; append prompts[0] -> 20 tokens; pre_layrnorm on all 20; layer 0; before layer i>=1: drop last 3 tokens, append prompts[i] raw (no LN); after last layer: CLS -> post_layernorm -> visual_projection -> L2 normalize",
            "shallow": "only prompts[0] (vpt_prompts[0]) appended before pre_layrnorm, kept through all layers; vpt_shallow_grad has shape [1,3,48]",
            "loss": "loss_v = sum(vpt_image_embeds * vpt_w); vpt_grad = d loss_v / d vpt_prompts (same vpt_w for the shallow variant)",
        },
        "conventions": {
            "layer_norm": "biased variance, eps 1e-5, applied as (x-mean)/sqrt(var+eps)*w+b",
            "activation": "quick_gelu(x) = x * sigmoid(1.702 * x)",
            "attention": "q,k,v = Linear(x) with bias; split heads (head_dim = width/heads); scores = q@k^T * head_dim**-0.5; text: causal (j <= i), vision: no mask; softmax; out_proj with bias",
            "block": "x = x + attn(ln1(x)); x = x + fc2(quick_gelu(fc1(ln2(x))))",
            "vision_last_hidden": "encoder output BEFORE post_layernorm (HF last_hidden_state)",
            "text_last_hidden": "AFTER final_layer_norm, all 77 positions (HF last_hidden_state)",
            "patch_order": "conv output [B,48,4,4] flattened row-major: token 1 + row*4 + col",
        },
        "verification": {
            "hand_vs_hf_max_abs": hand_diffs,
            "open_clip_vs_hf_max_abs": oc_diffs,
            "grad_f32_vs_f64": grad_diffs,
        },
        "tensors": {k: {"dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape)} for k, v in ref.items()},
    }
    with open(os.path.join(OUT, "reference.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2, ensure_ascii=False)
        f.write("\n")

    # ---- summary
    print("\nreference tensors:")
    for k, v in ref.items():
        print(f"  {k:28s} {str(v.dtype):14s} {list(v.shape)}")
    print(f"\nlogit_scale = {logit_scale!r} (exp = {math.exp(logit_scale):.6f})")
    print(f"zs argmax (ensembled) = {zs_probs.argmax(-1).tolist()}, max prob = {zs_probs.max().item():.4f}")
    print("\nfiles:")
    total = 0
    for root, _, files in os.walk(OUT):
        for fn in sorted(files):
            p = os.path.join(root, fn)
            sz = os.path.getsize(p)
            total += sz
            with open(p, "rb") as fh:
                digest = hashlib.sha256(fh.read()).hexdigest()[:12]
            print(f"  {os.path.relpath(p, OUT):28s} {sz:>10,d} B  sha256:{digest}")
    print(f"  total {total:,d} B ({total / 2**20:.2f} MiB)")
    check(total < 8 * 2**20, "fixture folder under 8 MiB")


if __name__ == "__main__":
    sys.exit(main())
