//! CLIP architecture hyper-parameters: presets for the published ViTs and parsing of a
//! Hugging Face `config.json`, so any checkpoint describes its own shape.

use serde::{Deserialize, Serialize};
use std::path::Path;

use super::ClipError;

/// MLP non-linearity. OpenAI's checkpoints were trained with QuickGELU; many LAION
/// open_clip models use exact GELU, so the choice must come from the checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    QuickGelu,
    Gelu,
}

impl Activation {
    fn from_hf(name: &str) -> Result<Self, ClipError> {
        match name {
            "quick_gelu" => Ok(Self::QuickGelu),
            "gelu" => Ok(Self::Gelu),
            other => Err(ClipError::Config(format!(
                "unsupported hidden_act {other:?} (expected \"quick_gelu\" or \"gelu\")"
            ))),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub context_length: usize,
    pub activation: Activation,
    pub layer_norm_eps: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub activation: Activation,
    pub layer_norm_eps: f64,
}

impl VisionConfig {
    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
    /// Tokens in the sequence without visual prompts: class token + patches.
    pub fn num_positions(&self) -> usize {
        self.grid() * self.grid() + 1
    }

    /// Check the divisibility constraints the image tower relies on.
    pub fn validate(&self) -> Result<(), ClipError> {
        if !self.hidden_size.is_multiple_of(self.num_heads) {
            return Err(ClipError::Config(format!(
                "vision hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_heads
            )));
        }
        if self.patch_size == 0 || !self.image_size.is_multiple_of(self.patch_size) {
            return Err(ClipError::Config(format!(
                "image_size {} is not a multiple of patch_size {}",
                self.image_size, self.patch_size
            )));
        }
        Ok(())
    }

    /// A `vision_config` as transformers writes it, with its defaults (ViT-B/32's) for the
    /// fields left out: one reading for a CLIPModel and a vision-only folder.
    fn from_hf_tower(v: &HfTower) -> Result<Self, ClipError> {
        Ok(Self {
            hidden_size: v.hidden_size.unwrap_or(768),
            intermediate_size: v.intermediate_size.unwrap_or(3072),
            num_layers: v.num_hidden_layers.unwrap_or(12),
            num_heads: v.num_attention_heads.unwrap_or(12),
            image_size: v.image_size.unwrap_or(224),
            patch_size: v.patch_size.unwrap_or(32),
            activation: Activation::from_hf(v.hidden_act.as_deref().unwrap_or("quick_gelu"))?,
            layer_norm_eps: v.layer_norm_eps.unwrap_or(1e-5),
        })
    }

    /// Parse the `config.json` of a Hugging Face `CLIPVisionModelWithProjection`
    /// (`model_type: clip_vision_model`, the vision fields at the top level); missing fields
    /// take transformers' defaults. Returns the tower's shape and `projection_dim`.
    pub fn from_hf_vision_json(json: &str) -> Result<(Self, usize), ClipError> {
        let raw: HfVisionFile =
            serde_json::from_str(json).map_err(|e| ClipError::Config(e.to_string()))?;
        match raw.model_type.as_deref() {
            Some("clip_vision_model") | None => {}
            Some(other) => {
                return Err(ClipError::Config(format!(
                    "model_type is {other:?}, expected \"clip_vision_model\" (a CLIPVisionModelWithProjection folder)"
                )))
            }
        }
        let cfg = Self::from_hf_tower(&raw.tower)?;
        cfg.validate()?;
        Ok((cfg, raw.projection_dim.unwrap_or(512)))
    }

    /// The `config.json` of a Hugging Face `CLIPVisionModelWithProjection` of this shape
    /// (what [`VisionConfig::from_hf_vision_json`] reads back).
    pub fn to_hf_vision_json(&self, projection_dim: usize) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["CLIPVisionModelWithProjection"],
            "model_type": "clip_vision_model",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_channels": 3,
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "hidden_act": match self.activation {
                Activation::QuickGelu => "quick_gelu",
                Activation::Gelu => "gelu",
            },
            "layer_norm_eps": self.layer_norm_eps,
            "projection_dim": projection_dim,
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "initializer_factor": 1.0,
            "dtype": "float32",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClipConfig {
    pub text: TextConfig,
    pub vision: VisionConfig,
    pub projection_dim: usize,
    /// Initial value of the learnable log temperature (ln 100 after CLIP's training).
    pub logit_scale_init: f64,
}

fn text(width: usize, layers: usize, heads: usize) -> TextConfig {
    TextConfig {
        vocab_size: 49408,
        hidden_size: width,
        intermediate_size: 4 * width,
        num_layers: layers,
        num_heads: heads,
        context_length: 77,
        activation: Activation::QuickGelu,
        layer_norm_eps: 1e-5,
    }
}

fn vision(width: usize, layers: usize, heads: usize, image: usize, patch: usize) -> VisionConfig {
    VisionConfig {
        hidden_size: width,
        intermediate_size: 4 * width,
        num_layers: layers,
        num_heads: heads,
        image_size: image,
        patch_size: patch,
        activation: Activation::QuickGelu,
        layer_norm_eps: 1e-5,
    }
}

impl ClipConfig {
    pub fn vit_b32() -> Self {
        Self {
            text: text(512, 12, 8),
            vision: vision(768, 12, 12, 224, 32),
            projection_dim: 512,
            logit_scale_init: 100f64.ln(),
        }
    }
    pub fn vit_b16() -> Self {
        Self {
            vision: vision(768, 12, 12, 224, 16),
            ..Self::vit_b32()
        }
    }
    pub fn vit_l14() -> Self {
        Self {
            text: text(768, 12, 12),
            vision: vision(1024, 24, 16, 224, 14),
            projection_dim: 768,
            logit_scale_init: 100f64.ln(),
        }
    }
    pub fn vit_l14_336() -> Self {
        let mut c = Self::vit_l14();
        c.vision.image_size = 336;
        c
    }

    /// A preset by its common name (`ViT-B/32`, `vit-b-16`, `ViT-L/14@336`, ...).
    pub fn preset(name: &str) -> Option<Self> {
        let key: String = name
            .to_ascii_lowercase()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '@')
            .collect();
        match key.as_str() {
            "vitb32" => Some(Self::vit_b32()),
            "vitb16" => Some(Self::vit_b16()),
            "vitl14" => Some(Self::vit_l14()),
            "vitl14336" | "vitl14@336" => Some(Self::vit_l14_336()),
            _ => None,
        }
    }

    /// Parse a Hugging Face `CLIPModel` `config.json`. Missing fields take the values
    /// transformers uses as defaults, so minimal configs written by hand also load.
    pub fn from_hf_json(json: &str) -> Result<Self, ClipError> {
        let raw: HfConfig =
            serde_json::from_str(json).map_err(|e| ClipError::Config(e.to_string()))?;
        let t = raw.text_config.unwrap_or_default();
        let v = raw.vision_config.unwrap_or_default();
        let cfg = Self {
            text: TextConfig {
                vocab_size: t.vocab_size.unwrap_or(49408),
                hidden_size: t.hidden_size.unwrap_or(512),
                intermediate_size: t.intermediate_size.unwrap_or(2048),
                num_layers: t.num_hidden_layers.unwrap_or(12),
                num_heads: t.num_attention_heads.unwrap_or(8),
                context_length: t.max_position_embeddings.unwrap_or(77),
                activation: Activation::from_hf(t.hidden_act.as_deref().unwrap_or("quick_gelu"))?,
                layer_norm_eps: t.layer_norm_eps.unwrap_or(1e-5),
            },
            vision: VisionConfig::from_hf_tower(&v)?,
            projection_dim: raw.projection_dim.unwrap_or(512),
            logit_scale_init: raw.logit_scale_init_value.unwrap_or(2.6592),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn from_hf_file(path: &Path) -> Result<Self, ClipError> {
        let json = std::fs::read_to_string(path).map_err(|e| ClipError::io(path, e))?;
        Self::from_hf_json(&json).map_err(|e| e.in_file(path))
    }

    /// Check the divisibility constraints the towers rely on.
    pub fn validate(&self) -> Result<(), ClipError> {
        self.vision.validate()?;
        let t = &self.text;
        let bad = |m: String| Err(ClipError::Config(m));
        if !t.hidden_size.is_multiple_of(t.num_heads) {
            return bad(format!(
                "text hidden_size {} is not divisible by num_attention_heads {}",
                t.hidden_size, t.num_heads
            ));
        }
        if t.context_length < 3 {
            return bad(format!(
                "text context length {} is too short",
                t.context_length
            ));
        }
        Ok(())
    }
}

#[derive(Deserialize, Default)]
struct HfTower {
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    max_position_embeddings: Option<usize>,
    hidden_act: Option<String>,
    layer_norm_eps: Option<f64>,
    image_size: Option<usize>,
    patch_size: Option<usize>,
}

/// A `CLIPVisionModelWithProjection` config: the vision fields at the top level.
#[derive(Deserialize)]
struct HfVisionFile {
    model_type: Option<String>,
    projection_dim: Option<usize>,
    #[serde(flatten)]
    tower: HfTower,
}

#[derive(Deserialize)]
struct HfConfig {
    text_config: Option<HfTower>,
    vision_config: Option<HfTower>,
    projection_dim: Option<usize>,
    logit_scale_init_value: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid() {
        for name in ["ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336"] {
            let c = ClipConfig::preset(name).expect(name);
            c.validate().unwrap();
        }
        assert_eq!(ClipConfig::vit_b16().vision.num_positions(), 197);
        assert_eq!(ClipConfig::vit_l14_336().vision.num_positions(), 577);
        assert!(ClipConfig::preset("resnet50").is_none());
    }

    #[test]
    fn hf_json_parses_and_rejects_bad_values() {
        let json = r#"{"projection_dim": 24, "text_config": {"hidden_size": 32, "num_attention_heads": 4,
            "num_hidden_layers": 2, "intermediate_size": 128},
            "vision_config": {"hidden_size": 48, "num_attention_heads": 4, "image_size": 32,
            "patch_size": 8, "hidden_act": "gelu"}}"#;
        let c = ClipConfig::from_hf_json(json).unwrap();
        assert_eq!(c.text.hidden_size, 32);
        assert_eq!(c.vision.activation, Activation::Gelu);
        assert_eq!(c.vision.num_positions(), 17);
        let bad = json.replace("\"patch_size\": 8", "\"patch_size\": 7");
        assert!(ClipConfig::from_hf_json(&bad)
            .unwrap_err()
            .to_string()
            .contains("patch_size"));
        let bad = json.replace("\"gelu\"", "\"relu\"");
        assert!(ClipConfig::from_hf_json(&bad)
            .unwrap_err()
            .to_string()
            .contains("relu"));
    }
}
