//! Checkpoint loading and saving: safetensors in Hugging Face `CLIPModel` names or
//! OpenAI / open_clip state-dict names, one build path for both (OpenAI names are
//! renamed to Hugging Face names first), and seeded random weights that take the same
//! path, so tests exercise exactly what a real checkpoint goes through.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::tensor::{Device, Tensor};
use rand::{RngExt, SeedableRng};
use safetensors::{Dtype, SafeTensors};

use super::config::{Activation, ClipConfig, TextConfig, VisionConfig};
use super::model::Clip;
use super::text::TextTower;
use super::transformer::{layer_norm, Attention, Block, Mlp};
use super::vision::VisionTower;
use super::ClipError;
use crate::util::{HostTensor, TensorMap};

/// Read every tensor of a safetensors file as f32 (f32, f16 and bf16 are accepted).
pub fn read_safetensors(path: &Path) -> Result<TensorMap, ClipError> {
    let bytes = std::fs::read(path).map_err(|e| ClipError::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| ClipError::InFile {
        path: path.to_path_buf(),
        message: format!("not a valid safetensors file: {e}"),
    })?;
    let mut map = TensorMap::new();
    for (name, view) in st.tensors() {
        let data = match crate::util::safetensors_f32(&view) {
            Some(d) => d,
            None if is_ignored(&name) => continue,
            None => {
                return Err(ClipError::InFile {
                    path: path.to_path_buf(),
                    message: format!("tensor {name:?} has unsupported dtype {:?}", view.dtype()),
                })
            }
        };
        map.insert(name, HostTensor::new(view.shape().to_vec(), data));
    }
    Ok(map)
}

/// Write tensors as f32 safetensors, atomically (temp file + rename).
pub fn write_safetensors(path: &Path, map: &TensorMap) -> Result<(), ClipError> {
    write_safetensors_meta(path, map, None)
}

/// [`write_safetensors`] with `{"format": "pt"}` in the header, as PyTorch's
/// `save_pretrained` writes it (what `transformers` expects of a model folder).
pub fn write_safetensors_pt(path: &Path, map: &TensorMap) -> Result<(), ClipError> {
    let meta = [("format".to_string(), "pt".to_string())].into();
    write_safetensors_meta(path, map, Some(meta))
}

fn write_safetensors_meta(
    path: &Path,
    map: &TensorMap,
    meta: Option<std::collections::HashMap<String, String>>,
) -> Result<(), ClipError> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = map
        .iter()
        .map(|(k, t)| {
            let b: Vec<u8> = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            (k.clone(), b, t.shape.clone())
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(k, b, s)| {
            safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), b)
                .map(|v| (k.clone(), v))
                .map_err(|e| ClipError::Config(format!("tensor {k}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let out = safetensors::serialize(views, meta)
        .map_err(|e| ClipError::Config(format!("serialising {}: {e}", path.display())))?;
    crate::util::write_atomic(path, &out).map_err(|e| ClipError::io(path, e))
}

/// Buffers some exporters include that carry no weights.
fn is_ignored(name: &str) -> bool {
    name.ends_with("position_ids")
        || name.ends_with("attn_mask")
        || matches!(name, "input_resolution" | "context_length" | "vocab_size")
}

/// Which state-dict naming a checkpoint uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Naming {
    HuggingFace,
    OpenAi,
}

pub fn detect_naming(map: &TensorMap) -> Result<Naming, ClipError> {
    if map.keys().any(|k| k.starts_with("vision_model."))
        && map.contains_key("text_projection.weight")
    {
        return Ok(Naming::HuggingFace);
    }
    if map.contains_key("visual.conv1.weight") && map.contains_key("token_embedding.weight") {
        return Ok(Naming::OpenAi);
    }
    let sample: Vec<&str> = map.keys().take(5).map(String::as_str).collect();
    Err(ClipError::NotClip(format!(
        "found neither Hugging Face CLIPModel names (vision_model.*, text_projection.weight) \
         nor OpenAI/open_clip names (visual.conv1.weight, token_embedding.weight); first keys: {sample:?}"
    )))
}

fn count_layers(map: &TensorMap, prefix: &str) -> usize {
    let set: BTreeSet<usize> = map
        .keys()
        .filter_map(|k| k.strip_prefix(prefix))
        .filter_map(|rest| rest.split('.').next()?.parse().ok())
        .collect();
    set.len()
}

fn shape_of<'a>(map: &'a TensorMap, key: &str) -> Result<&'a [usize], ClipError> {
    map.get(key)
        .map(|t| t.shape.as_slice())
        .ok_or_else(|| ClipError::MissingKey {
            key: key.to_string(),
            expected: vec![],
        })
}

/// Hints that shapes alone cannot give for OpenAI-named checkpoints (open_clip's
/// `open_clip_config.json` carries them; OpenAI's own models use 64-wide heads and QuickGELU).
#[derive(Clone, Debug)]
pub struct OpenAiHints {
    pub vision_head_width: usize,
    pub text_heads: Option<usize>,
    pub activation: Activation,
}

impl Default for OpenAiHints {
    fn default() -> Self {
        Self {
            vision_head_width: 64,
            text_heads: None,
            activation: Activation::QuickGelu,
        }
    }
}

impl OpenAiHints {
    /// Read open_clip's model config: either `{"model_cfg": {...}}` (hub layout) or the
    /// model config itself (`{"embed_dim", "vision_cfg", "text_cfg", "quick_gelu"}`).
    pub fn from_open_clip_json(json: &str) -> Result<Self, ClipError> {
        let v: serde_json::Value =
            serde_json::from_str(json).map_err(|e| ClipError::Config(e.to_string()))?;
        let cfg = v.get("model_cfg").unwrap_or(&v);
        let mut hints = Self::default();
        if let Some(w) = cfg
            .pointer("/vision_cfg/head_width")
            .and_then(|x| x.as_u64())
        {
            hints.vision_head_width = w as usize;
        }
        if let Some(h) = cfg.pointer("/text_cfg/heads").and_then(|x| x.as_u64()) {
            hints.text_heads = Some(h as usize);
        }
        let quick = cfg
            .get("quick_gelu")
            .and_then(|x| x.as_bool())
            .unwrap_or(false);
        hints.activation = if quick {
            Activation::QuickGelu
        } else {
            Activation::Gelu
        };
        Ok(hints)
    }
}

/// Derive the architecture of an OpenAI-named checkpoint from its shapes (as open_clip's
/// `build_model_from_openai_state_dict` does).
pub fn infer_openai_config(map: &TensorMap, hints: &OpenAiHints) -> Result<ClipConfig, ClipError> {
    let conv = shape_of(map, "visual.conv1.weight")?;
    let (vw, patch) = (conv[0], conv[3]);
    let positions = shape_of(map, "visual.positional_embedding")?[0];
    let grid = ((positions - 1) as f64).sqrt().round() as usize;
    let tok = shape_of(map, "token_embedding.weight")?;
    let tw = tok[1];
    let vmlp = shape_of(map, "visual.transformer.resblocks.0.mlp.c_fc.weight")?[0];
    let tmlp = shape_of(map, "transformer.resblocks.0.mlp.c_fc.weight")?[0];
    let cfg = ClipConfig {
        text: TextConfig {
            vocab_size: tok[0],
            hidden_size: tw,
            intermediate_size: tmlp,
            num_layers: count_layers(map, "transformer.resblocks."),
            num_heads: hints.text_heads.unwrap_or(tw / 64),
            context_length: shape_of(map, "positional_embedding")?[0],
            activation: hints.activation,
            layer_norm_eps: 1e-5,
        },
        vision: VisionConfig {
            hidden_size: vw,
            intermediate_size: vmlp,
            num_layers: count_layers(map, "visual.transformer.resblocks."),
            num_heads: (vw / hints.vision_head_width).max(1),
            image_size: grid * patch,
            patch_size: patch,
            activation: hints.activation,
            layer_norm_eps: 1e-5,
        },
        projection_dim: shape_of(map, "text_projection")?[1],
        logit_scale_init: 100f64.ln(),
    };
    cfg.validate()?;
    Ok(cfg)
}

/// Rename (and reshape) an OpenAI/open_clip state dict into Hugging Face names.
pub fn openai_to_hf(mut map: TensorMap) -> Result<TensorMap, ClipError> {
    let mut out = TensorMap::new();
    let mut take = |k: &str| {
        map.remove(k).ok_or_else(|| ClipError::MissingKey {
            key: k.to_string(),
            expected: vec![],
        })
    };
    let mut put = |k: String, t: HostTensor| {
        out.insert(k, t);
    };
    put(
        "vision_model.embeddings.patch_embedding.weight".into(),
        take("visual.conv1.weight")?,
    );
    put(
        "vision_model.embeddings.class_embedding".into(),
        take("visual.class_embedding")?,
    );
    put(
        "vision_model.embeddings.position_embedding.weight".into(),
        take("visual.positional_embedding")?,
    );
    put(
        "text_model.embeddings.token_embedding.weight".into(),
        take("token_embedding.weight")?,
    );
    put(
        "text_model.embeddings.position_embedding.weight".into(),
        take("positional_embedding")?,
    );
    for (src, dst) in [
        ("visual.ln_pre", "vision_model.pre_layrnorm"),
        ("visual.ln_post", "vision_model.post_layernorm"),
        ("ln_final", "text_model.final_layer_norm"),
    ] {
        for p in ["weight", "bias"] {
            put(format!("{dst}.{p}"), take(&format!("{src}.{p}"))?);
        }
    }
    put(
        "visual_projection.weight".into(),
        take("visual.proj")?.transposed(),
    );
    put(
        "text_projection.weight".into(),
        take("text_projection")?.transposed(),
    );
    put("logit_scale".into(), take("logit_scale")?);
    let towers = [
        (
            "visual.transformer.resblocks.",
            "vision_model.encoder.layers.",
        ),
        ("transformer.resblocks.", "text_model.encoder.layers."),
    ];
    for (src, dst) in towers {
        let n = count_layers(&map, src);
        for i in 0..n {
            let s = format!("{src}{i}.");
            let d = format!("{dst}{i}.");
            let mut t = |k: &str| {
                map.remove(&format!("{s}{k}"))
                    .ok_or_else(|| ClipError::MissingKey {
                        key: format!("{s}{k}"),
                        expected: vec![],
                    })
            };
            let in_w = t("attn.in_proj_weight")?;
            let in_b = t("attn.in_proj_bias")?;
            let width = in_w.shape[1];
            if in_w.shape != [3 * width, width] {
                return Err(ClipError::Shape {
                    key: format!("{s}attn.in_proj_weight"),
                    expected: vec![3 * width, width],
                    found: in_w.shape.clone(),
                });
            }
            for (j, name) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
                let w = in_w.data[j * width * width..(j + 1) * width * width].to_vec();
                let b = in_b.data[j * width..(j + 1) * width].to_vec();
                out.insert(
                    format!("{d}self_attn.{name}.weight"),
                    HostTensor::new(vec![width, width], w),
                );
                out.insert(
                    format!("{d}self_attn.{name}.bias"),
                    HostTensor::new(vec![width], b),
                );
            }
            for (a, b) in [
                ("attn.out_proj", "self_attn.out_proj"),
                ("ln_1", "layer_norm1"),
                ("ln_2", "layer_norm2"),
                ("mlp.c_fc", "mlp.fc1"),
                ("mlp.c_proj", "mlp.fc2"),
            ] {
                for p in ["weight", "bias"] {
                    out.insert(format!("{d}{b}.{p}"), t(&format!("{a}.{p}"))?);
                }
            }
        }
    }
    map.retain(|k, _| !is_ignored(k));
    if !map.is_empty() {
        return Err(unexpected(map.keys()));
    }
    Ok(out)
}

fn unexpected<'a>(keys: impl Iterator<Item = &'a String>) -> ClipError {
    let keys: Vec<&String> = keys.collect();
    let shown: Vec<&str> = keys.iter().take(8).map(|k| k.as_str()).collect();
    let more = if keys.len() > 8 {
        format!(" and {} more", keys.len() - 8)
    } else {
        String::new()
    };
    ClipError::Unexpected(format!("{shown:?}{more}"))
}

/// Every tensor of a Hugging Face `CLIPModel` with its shape, in a stable order.
pub fn hf_specs(cfg: &ClipConfig) -> Vec<(String, Vec<usize>)> {
    let mut v: Vec<(String, Vec<usize>)> = Vec::new();
    let t = &cfg.text;
    let vi = &cfg.vision;
    let mut blocks = |prefix: &str, d: usize, inter: usize, n: usize| {
        for i in 0..n {
            let p = format!("{prefix}.encoder.layers.{i}");
            for name in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                v.push((format!("{p}.self_attn.{name}.weight"), vec![d, d]));
                v.push((format!("{p}.self_attn.{name}.bias"), vec![d]));
            }
            for ln in ["layer_norm1", "layer_norm2"] {
                v.push((format!("{p}.{ln}.weight"), vec![d]));
                v.push((format!("{p}.{ln}.bias"), vec![d]));
            }
            v.push((format!("{p}.mlp.fc1.weight"), vec![inter, d]));
            v.push((format!("{p}.mlp.fc1.bias"), vec![inter]));
            v.push((format!("{p}.mlp.fc2.weight"), vec![d, inter]));
            v.push((format!("{p}.mlp.fc2.bias"), vec![d]));
        }
    };
    blocks(
        "text_model",
        t.hidden_size,
        t.intermediate_size,
        t.num_layers,
    );
    blocks(
        "vision_model",
        vi.hidden_size,
        vi.intermediate_size,
        vi.num_layers,
    );
    let (td, vd) = (t.hidden_size, vi.hidden_size);
    v.push((
        "text_model.embeddings.token_embedding.weight".into(),
        vec![t.vocab_size, td],
    ));
    v.push((
        "text_model.embeddings.position_embedding.weight".into(),
        vec![t.context_length, td],
    ));
    v.push(("text_model.final_layer_norm.weight".into(), vec![td]));
    v.push(("text_model.final_layer_norm.bias".into(), vec![td]));
    v.push(("vision_model.embeddings.class_embedding".into(), vec![vd]));
    v.push((
        "vision_model.embeddings.patch_embedding.weight".into(),
        vec![vd, 3, vi.patch_size, vi.patch_size],
    ));
    v.push((
        "vision_model.embeddings.position_embedding.weight".into(),
        vec![vi.num_positions(), vd],
    ));
    for ln in ["pre_layrnorm", "post_layernorm"] {
        v.push((format!("vision_model.{ln}.weight"), vec![vd]));
        v.push((format!("vision_model.{ln}.bias"), vec![vd]));
    }
    v.push((
        "visual_projection.weight".into(),
        vec![cfg.projection_dim, vd],
    ));
    v.push((
        "text_projection.weight".into(),
        vec![cfg.projection_dim, td],
    ));
    v.push(("logit_scale".into(), vec![]));
    v
}

/// Seeded random weights in Hugging Face names: N(0, 0.02) matrices and embeddings, unit
/// LayerNorm gains, zero biases, ln(100) temperature. For tests and benchmarks.
pub fn random_hf(cfg: &ClipConfig, seed: u64) -> TensorMap {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut map = TensorMap::new();
    for (name, shape) in hf_specs(cfg) {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = if name == "logit_scale" {
            vec![cfg.logit_scale_init as f32]
        } else if name.contains("norm") && name.ends_with("weight") {
            vec![1.0; n]
        } else if name.ends_with("bias") {
            vec![0.0; n]
        } else {
            (0..n).map(|_| normal(&mut rng) * 0.02).collect()
        };
        map.insert(name, HostTensor::new(shape, data));
    }
    map
}

/// Standard normal by Box-Muller (keeps the generator choice ours, hence stable).
pub(crate) fn normal(rng: &mut impl rand::Rng) -> f32 {
    let u1: f64 = rng.random::<f64>().max(1e-300);
    let u2: f64 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// Pulls tensors out of a map by name, checking shapes and remembering what was used.
struct Taker {
    map: TensorMap,
}

impl Taker {
    fn take(&mut self, key: &str, expected: &[usize]) -> Result<HostTensor, ClipError> {
        let t = self.map.remove(key).ok_or_else(|| ClipError::MissingKey {
            key: key.to_string(),
            expected: expected.to_vec(),
        })?;
        // A scalar may be stored as [] or [1].
        let same = t.shape == expected
            || (expected.is_empty() && t.shape == [1])
            || (expected == [1] && t.shape.is_empty());
        if !same {
            return Err(ClipError::Shape {
                key: key.to_string(),
                expected: expected.to_vec(),
                found: t.shape,
            });
        }
        Ok(t)
    }

    fn vec(&mut self, key: &str, n: usize, device: &Device) -> Result<Tensor<1>, ClipError> {
        Ok(self.take(key, &[n])?.to_tensor(device))
    }

    fn layer_norm(
        &mut self,
        prefix: &str,
        d: usize,
        eps: f64,
        device: &Device,
    ) -> Result<burn::nn::LayerNorm, ClipError> {
        let g = self.vec(&format!("{prefix}.weight"), d, device)?;
        let b = self.vec(&format!("{prefix}.bias"), d, device)?;
        Ok(layer_norm(g, b, eps, device))
    }

    fn linear(
        &mut self,
        prefix: &str,
        out: usize,
        inp: usize,
        device: &Device,
    ) -> Result<burn::nn::Linear, ClipError> {
        let w = self.take(&format!("{prefix}.weight"), &[out, inp])?;
        let b = self.vec(&format!("{prefix}.bias"), out, device)?;
        // Stored [in, out] contiguous so no transpose happens per forward.
        Ok(burn::nn::Linear {
            weight: Param::from_tensor(w.transposed().to_tensor(device)),
            bias: Some(Param::from_tensor(b)),
        })
    }

    /// The image tower's tensors (`vision_model.*`, `visual_projection.weight`).
    fn vision(
        &mut self,
        v: &VisionConfig,
        projection_dim: usize,
        device: &Device,
    ) -> Result<VisionTower, ClipError> {
        let (vd, p) = (v.hidden_size, v.patch_size);
        let patch = self.take(
            "vision_model.embeddings.patch_embedding.weight",
            &[vd, 3, p, p],
        )?;
        let patch = HostTensor::new(vec![vd, 3 * p * p], patch.data).transposed();
        Ok(VisionTower {
            patch_embed: Param::from_tensor(patch.to_tensor(device)),
            class_embedding: Param::from_tensor(self.vec(
                "vision_model.embeddings.class_embedding",
                vd,
                device,
            )?),
            position_embedding: Param::from_tensor(
                self.take(
                    "vision_model.embeddings.position_embedding.weight",
                    &[v.num_positions(), vd],
                )?
                .to_tensor(device),
            ),
            ln_pre: self.layer_norm("vision_model.pre_layrnorm", vd, v.layer_norm_eps, device)?,
            layers: self.blocks(
                "vision_model",
                vd,
                v.intermediate_size,
                v.num_layers,
                v.num_heads,
                v.activation,
                v.layer_norm_eps,
                device,
            )?,
            ln_post: self.layer_norm(
                "vision_model.post_layernorm",
                vd,
                v.layer_norm_eps,
                device,
            )?,
            projection: Param::from_tensor(
                self.take("visual_projection.weight", &[projection_dim, vd])?
                    .transposed()
                    .to_tensor(device),
            ),
            config: v.clone(),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn blocks(
        &mut self,
        prefix: &str,
        d: usize,
        inter: usize,
        n: usize,
        heads: usize,
        act: Activation,
        eps: f64,
        device: &Device,
    ) -> Result<Vec<Block>, ClipError> {
        (0..n)
            .map(|i| {
                let p = format!("{prefix}.encoder.layers.{i}");
                let mut w = Vec::with_capacity(3 * d * d);
                let mut b = Vec::with_capacity(3 * d);
                for name in ["q_proj", "k_proj", "v_proj"] {
                    w.extend(
                        self.take(&format!("{p}.self_attn.{name}.weight"), &[d, d])?
                            .data,
                    );
                    b.extend(self.take(&format!("{p}.self_attn.{name}.bias"), &[d])?.data);
                }
                let qkv_w = HostTensor::new(vec![3 * d, d], w).transposed();
                let qkv = burn::nn::Linear {
                    weight: Param::from_tensor(qkv_w.to_tensor(device)),
                    bias: Some(Param::from_tensor(
                        HostTensor::new(vec![3 * d], b).to_tensor(device),
                    )),
                };
                Ok(Block {
                    ln1: self.layer_norm(&format!("{p}.layer_norm1"), d, eps, device)?,
                    attn: Attention {
                        qkv,
                        out: self.linear(&format!("{p}.self_attn.out_proj"), d, d, device)?,
                        num_heads: heads,
                    },
                    ln2: self.layer_norm(&format!("{p}.layer_norm2"), d, eps, device)?,
                    mlp: Mlp {
                        fc1: self.linear(&format!("{p}.mlp.fc1"), inter, d, device)?,
                        fc2: self.linear(&format!("{p}.mlp.fc2"), d, inter, device)?,
                        activation: act,
                    },
                })
            })
            .collect()
    }
}

/// Build a model from tensors in Hugging Face names. Every tensor must be used exactly
/// once: a missing, surplus or mis-shaped one is an error naming it.
pub fn build_clip(cfg: &ClipConfig, map: TensorMap, device: &Device) -> Result<Clip, ClipError> {
    cfg.validate()?;
    let mut tk = Taker {
        map: map.into_iter().filter(|(k, _)| !is_ignored(k)).collect(),
    };
    let (t, v) = (&cfg.text, &cfg.vision);
    let td = t.hidden_size;
    let vision = tk.vision(v, cfg.projection_dim, device)?;
    let text = TextTower {
        token_embedding: Param::from_tensor(
            tk.take(
                "text_model.embeddings.token_embedding.weight",
                &[t.vocab_size, td],
            )?
            .to_tensor(device),
        ),
        position_embedding: Param::from_tensor(
            tk.take(
                "text_model.embeddings.position_embedding.weight",
                &[t.context_length, td],
            )?
            .to_tensor(device),
        ),
        layers: tk.blocks(
            "text_model",
            td,
            t.intermediate_size,
            t.num_layers,
            t.num_heads,
            t.activation,
            t.layer_norm_eps,
            device,
        )?,
        ln_final: tk.layer_norm("text_model.final_layer_norm", td, t.layer_norm_eps, device)?,
        projection: Param::from_tensor(
            tk.take("text_projection.weight", &[cfg.projection_dim, td])?
                .transposed()
                .to_tensor(device),
        ),
        config: t.clone(),
    };
    let scale = tk.take("logit_scale", &[])?;
    let logit_scale = Param::from_tensor(HostTensor::new(vec![1], scale.data).to_tensor(device));
    if !tk.map.is_empty() {
        return Err(unexpected(tk.map.keys()));
    }
    Ok(Clip {
        vision,
        text,
        logit_scale,
        config: cfg.clone(),
    })
}

/// The model's weights back in Hugging Face names (for saving checkpoints).
pub fn clip_to_hf(model: &Clip) -> TensorMap {
    let mut m = vision_to_hf(&model.vision);
    let t = &model.text;
    blocks_to_hf("text_model", &t.layers, &mut m);
    let (g, beta) = ln_to_hf(&t.ln_final);
    m.insert("text_model.final_layer_norm.weight".into(), g);
    if let Some(beta) = beta {
        m.insert("text_model.final_layer_norm.bias".into(), beta);
    }
    m.insert(
        "text_projection.weight".into(),
        HostTensor::from_tensor(&t.projection.val()).transposed(),
    );
    m.insert(
        "text_model.embeddings.token_embedding.weight".into(),
        HostTensor::from_tensor(&t.token_embedding.val()),
    );
    m.insert(
        "text_model.embeddings.position_embedding.weight".into(),
        HostTensor::from_tensor(&t.position_embedding.val()),
    );
    let s = HostTensor::from_tensor(&model.logit_scale.val());
    m.insert("logit_scale".into(), HostTensor::new(vec![], s.data));
    m
}

/// An image tower's weights in the names of Hugging Face's `CLIPVisionModelWithProjection`
/// (`vision_model.*` and `visual_projection.weight`; PyTorch layouts: linear weights
/// `[out, in]`, q, k and v apart, the patch embedding as the `[width, 3, p, p]` convolution).
/// [`load_hf_vision`] reads them back into the same tensors, bit for bit.
pub fn vision_to_hf(v: &VisionTower) -> TensorMap {
    let mut m = TensorMap::new();
    blocks_to_hf("vision_model", &v.layers, &mut m);
    let (vd, p) = (v.config.hidden_size, v.config.patch_size);
    let patch = HostTensor::from_tensor(&v.patch_embed.val()).transposed();
    m.insert(
        "vision_model.embeddings.patch_embedding.weight".into(),
        HostTensor::new(vec![vd, 3, p, p], patch.data),
    );
    m.insert(
        "vision_model.embeddings.class_embedding".into(),
        HostTensor::from_tensor(&v.class_embedding.val()),
    );
    m.insert(
        "vision_model.embeddings.position_embedding.weight".into(),
        HostTensor::from_tensor(&v.position_embedding.val()),
    );
    for (name, l) in [
        ("vision_model.pre_layrnorm", &v.ln_pre),
        ("vision_model.post_layernorm", &v.ln_post),
    ] {
        let (g, beta) = ln_to_hf(l);
        m.insert(format!("{name}.weight"), g);
        if let Some(beta) = beta {
            m.insert(format!("{name}.bias"), beta);
        }
    }
    m.insert(
        "visual_projection.weight".into(),
        HostTensor::from_tensor(&v.projection.val()).transposed(),
    );
    m
}

/// A linear layer as PyTorch stores it: weight `[out, in]`, bias `[out]`.
pub fn linear_to_hf(l: &burn::nn::Linear) -> (HostTensor, Option<HostTensor>) {
    (
        HostTensor::from_tensor(&l.weight.val()).transposed(),
        l.bias.as_ref().map(|b| HostTensor::from_tensor(&b.val())),
    )
}

fn ln_to_hf(l: &burn::nn::LayerNorm) -> (HostTensor, Option<HostTensor>) {
    (
        HostTensor::from_tensor(&l.gamma.val()),
        l.beta.as_ref().map(|b| HostTensor::from_tensor(&b.val())),
    )
}

fn blocks_to_hf(prefix: &str, layers: &[Block], m: &mut TensorMap) {
    for (i, b) in layers.iter().enumerate() {
        let p = format!("{prefix}.encoder.layers.{i}");
        let (w, bias) = linear_to_hf(&b.attn.qkv);
        let d = w.shape[1];
        for (j, name) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
            m.insert(
                format!("{p}.self_attn.{name}.weight"),
                HostTensor::new(vec![d, d], w.data[j * d * d..(j + 1) * d * d].to_vec()),
            );
            if let Some(bias) = &bias {
                m.insert(
                    format!("{p}.self_attn.{name}.bias"),
                    HostTensor::new(vec![d], bias.data[j * d..(j + 1) * d].to_vec()),
                );
            }
        }
        for (name, l) in [
            ("self_attn.out_proj", &b.attn.out),
            ("mlp.fc1", &b.mlp.fc1),
            ("mlp.fc2", &b.mlp.fc2),
        ] {
            let (w, bias) = linear_to_hf(l);
            m.insert(format!("{p}.{name}.weight"), w);
            if let Some(bias) = bias {
                m.insert(format!("{p}.{name}.bias"), bias);
            }
        }
        for (name, l) in [("layer_norm1", &b.ln1), ("layer_norm2", &b.ln2)] {
            let (g, beta) = ln_to_hf(l);
            m.insert(format!("{p}.{name}.weight"), g);
            if let Some(beta) = beta {
                m.insert(format!("{p}.{name}.bias"), beta);
            }
        }
    }
}

/// Build an image tower from tensors in `CLIPVisionModelWithProjection` names; like
/// [`build_clip`], every tensor must be used exactly once.
pub fn build_vision(
    v: &VisionConfig,
    projection_dim: usize,
    map: TensorMap,
    device: &Device,
) -> Result<VisionTower, ClipError> {
    v.validate()?;
    let mut tk = Taker {
        map: map.into_iter().filter(|(k, _)| !is_ignored(k)).collect(),
    };
    let vision = tk.vision(v, projection_dim, device)?;
    if !tk.map.is_empty() {
        return Err(unexpected(tk.map.keys()));
    }
    Ok(vision)
}

/// Load a Hugging Face `CLIPVisionModelWithProjection` folder (`config.json` with
/// `model_type: clip_vision_model` + `model.safetensors`): the image tower and its
/// projection, as `transformers` would load it. Returns the tower and the projection width.
pub fn load_hf_vision(dir: &Path, device: &Device) -> Result<(VisionTower, usize), ClipError> {
    let cfg_path = dir.join("config.json");
    let json = std::fs::read_to_string(&cfg_path).map_err(|e| ClipError::io(&cfg_path, e))?;
    let (v, projection_dim) =
        VisionConfig::from_hf_vision_json(&json).map_err(|e| e.in_file(&cfg_path))?;
    let weights = dir.join("model.safetensors");
    let map = read_safetensors(&weights)?;
    let tower = build_vision(&v, projection_dim, map, device).map_err(|e| e.in_file(&weights))?;
    Ok((tower, projection_dim))
}

/// Where a model came from, for logs and run configs.
#[derive(Clone, Debug)]
pub struct ModelSource {
    pub spec: String,
    pub weights: Option<PathBuf>,
    pub naming: Option<Naming>,
}

/// Resolve `--model`: a directory (`config.json` + `model.safetensors`, or an open_clip
/// export), a `.safetensors` file, `random:<preset or config.json>[:seed]` for tests and
/// benchmarks, or a Hugging Face hub id (`openai/clip-vit-base-patch16`).
pub fn load_model(spec: &str, device: &Device) -> Result<(Clip, ModelSource), ClipError> {
    if let Some(rest) = spec.strip_prefix("random:") {
        let (name, seed) = match rest.rsplit_once(':') {
            Some((n, s)) if s.parse::<u64>().is_ok() => (n, s.parse().unwrap_or(0)),
            _ => (rest, 0),
        };
        let cfg = match ClipConfig::preset(name) {
            Some(c) => c,
            None if Path::new(name).is_file() => ClipConfig::from_hf_file(Path::new(name))?,
            None => {
                return Err(ClipError::Config(format!(
                    "random:{name}: unknown preset `{name}` (expected ViT-B/32, ViT-B/16, \
                     ViT-L/14, ViT-L/14@336, or a config.json file)"
                )))
            }
        };
        let model = build_clip(&cfg, random_hf(&cfg, seed), device)?;
        let src = ModelSource {
            spec: spec.into(),
            weights: None,
            naming: None,
        };
        return Ok((model, src));
    }
    let path = Path::new(spec);
    let (cfg_path, weights) = if path.is_dir() {
        local_files(path)?
    } else if path.is_file() {
        (None, path.to_path_buf())
    } else if looks_like_hub_id(spec) {
        super::hub::fetch(spec)?
    } else {
        return Err(ClipError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such file or directory (and not a Hugging Face model id)",
            ),
        });
    };
    let (model, naming) = load_files(cfg_path.as_deref(), &weights, device)?;
    let src = ModelSource {
        spec: spec.into(),
        weights: Some(weights),
        naming: Some(naming),
    };
    Ok((model, src))
}

fn looks_like_hub_id(spec: &str) -> bool {
    let parts: Vec<&str> = spec.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

/// Find the weights (and config) in a model directory.
fn local_files(dir: &Path) -> Result<(Option<PathBuf>, PathBuf), ClipError> {
    for (cfg, weights) in [
        ("config.json", "model.safetensors"),
        ("open_clip_config.json", "open_clip_model.safetensors"),
        (
            "open_clip_config.json",
            "open_clip_pytorch_model.safetensors",
        ),
    ] {
        let w = dir.join(weights);
        if w.is_file() {
            let c = dir.join(cfg);
            return Ok((c.is_file().then_some(c), w));
        }
    }
    if dir.join("pytorch_model.bin").is_file() || dir.join("open_clip_pytorch_model.bin").is_file()
    {
        return Err(ClipError::InFile {
            path: dir.to_path_buf(),
            message: "only PyTorch .bin weights found; coft reads safetensors (convert with \
                      `transformers` save_pretrained(safe_serialization=True))"
                .into(),
        });
    }
    Err(ClipError::InFile {
        path: dir.to_path_buf(),
        message: "no model.safetensors (Hugging Face) or open_clip_model.safetensors found".into(),
    })
}

/// Load a checkpoint file, with an optional config beside it.
pub fn load_files(
    config: Option<&Path>,
    weights: &Path,
    device: &Device,
) -> Result<(Clip, Naming), ClipError> {
    let map = read_safetensors(weights)?;
    let naming = detect_naming(&map).map_err(|e| e.in_file(weights))?;
    let sidecar = |names: &[&str]| -> Option<PathBuf> {
        let dir = weights.parent()?;
        names.iter().map(|n| dir.join(n)).find(|p| p.is_file())
    };
    let (cfg, map) = match naming {
        Naming::HuggingFace => {
            let cfg_path = config
                .map(Path::to_path_buf)
                .or_else(|| sidecar(&["config.json"]))
                .ok_or_else(|| ClipError::InFile {
                    path: weights.to_path_buf(),
                    message: "Hugging Face weights need their config.json beside them".into(),
                })?;
            (ClipConfig::from_hf_file(&cfg_path)?, map)
        }
        Naming::OpenAi => {
            let stem = weights
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("model");
            let own = format!("{stem}_config.json");
            let hints = match config
                .map(Path::to_path_buf)
                .or_else(|| sidecar(&[own.as_str(), "open_clip_config.json"]))
            {
                Some(p) => {
                    let json = std::fs::read_to_string(&p).map_err(|e| ClipError::io(&p, e))?;
                    OpenAiHints::from_open_clip_json(&json).map_err(|e| e.in_file(&p))?
                }
                None => OpenAiHints::default(),
            };
            let cfg = infer_openai_config(&map, &hints).map_err(|e| e.in_file(weights))?;
            (cfg, openai_to_hf(map).map_err(|e| e.in_file(weights))?)
        }
    };
    let model = build_clip(&cfg, map, device).map_err(|e| e.in_file(weights))?;
    Ok((model, naming))
}
