//! Numerical parity with the Hugging Face reference (fixtures from tools/make_fixtures.py):
//! both checkpoint namings, both towers, zero-shot ensembling and the two method hooks
//! (CoOp text context, deep and shallow VPT) including their gradients.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use coft::clip::text::TokenBatch;
use coft::clip::weights::{self, load_files, Naming};
use coft::clip::Clip;
use coft::method::zero_shot;
use coft::util::{HostTensor, TensorMap};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip_tiny")
}

struct Reference {
    f: HashMap<String, (Vec<usize>, Vec<f32>)>,
    ids: HashMap<String, Vec<Vec<u32>>>,
}

fn reference() -> Reference {
    let bytes = std::fs::read(fixtures().join("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut f = HashMap::new();
    let mut ids = HashMap::new();
    for (name, v) in st.tensors() {
        let shape = v.shape().to_vec();
        match v.dtype() {
            safetensors::Dtype::F32 => {
                let d = v
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect();
                f.insert(name, (shape, d));
            }
            safetensors::Dtype::I64 => {
                let flat: Vec<u32> = v
                    .data()
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
                    .collect();
                ids.insert(name, flat.chunks(shape[1]).map(<[u32]>::to_vec).collect());
            }
            other => panic!("unexpected dtype {other:?}"),
        }
    }
    Reference { f, ids }
}

impl Reference {
    fn tensor<const D: usize>(&self, name: &str, device: &Device) -> Tensor<D> {
        let (shape, data) = self
            .f
            .get(name)
            .unwrap_or_else(|| panic!("no {name} in reference"));
        Tensor::from_data(TensorData::new(data.clone(), shape.clone()), device)
    }
    fn values(&self, name: &str) -> &[f32] {
        &self.f[name].1
    }
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

#[track_caller]
fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let (i, d) = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .enumerate()
        .fold((0, 0f32), |m, (i, d)| if d > m.1 { (i, d) } else { m });
    assert!(
        d <= tol,
        "{what}: max |diff| {d:e} at {i} (got {}, want {}) > {tol:e}",
        got[i],
        want[i]
    );
}

fn load(naming: Naming) -> Clip {
    let dir = fixtures();
    let (model, found) = match naming {
        Naming::HuggingFace => load_files(None, &dir.join("hf/model.safetensors"), &Device::flex()),
        Naming::OpenAi => load_files(None, &dir.join("openai.safetensors"), &Device::flex()),
    }
    .unwrap();
    assert_eq!(found, naming);
    model
}

fn check_towers(model: &Clip, r: &Reference) {
    let dev = Device::flex();
    let pixels: Tensor<4> = r.tensor("pixel_values", &dev);
    let hidden = model.vision.forward_hidden(pixels.clone(), None);
    assert_close(
        "vision hidden",
        &host(hidden),
        r.values("vision_last_hidden"),
        1e-4,
    );
    let raw = model.vision.forward(pixels.clone(), None);
    assert_close(
        "image_embeds_raw",
        &host(raw),
        r.values("image_embeds_raw"),
        1e-4,
    );
    let img = model.encode_image(pixels, None);
    assert_close("image_embeds", &host(img), r.values("image_embeds"), 1e-4);
    let batch = TokenBatch::new(&r.ids["input_ids"]);
    let txt = model.encode_text(&batch);
    assert_close("text_embeds", &host(txt), r.values("text_embeds"), 1e-4);
}

#[test]
fn hf_checkpoint_matches_reference() {
    let r = reference();
    let model = load(Naming::HuggingFace);
    check_towers(&model, &r);
    assert!((model.logit_scale_exp() - 14.298523).abs() < 1e-4);
}

#[test]
fn openai_checkpoint_matches_reference() {
    let r = reference();
    let model = load(Naming::OpenAi);
    check_towers(&model, &r);
}

#[test]
fn zero_shot_template_ensemble_matches_reference() {
    let r = reference();
    let model = load(Naming::HuggingFace);
    let dev = Device::flex();
    // input_ids are 6 classes x 3 templates, class-major (see reference.json).
    let ids = &r.ids["input_ids"];
    let prompts: Vec<Vec<Vec<u32>>> = ids.chunks(3).map(<[Vec<u32>]>::to_vec).collect();
    let classes = zero_shot::class_embeddings(&model, &prompts, 7);
    assert_close(
        "class_embeds",
        &host(classes.clone()),
        r.values("class_embeds"),
        1e-4,
    );
    let img = model.encode_image(r.tensor("pixel_values", &dev), None);
    let scale = model.logit_scale_exp();
    let probs = zero_shot::probabilities(img.clone(), classes, scale);
    assert_close("zs_probs", &host(probs), r.values("zs_probs"), 1e-5);
    let single: Vec<Vec<Vec<u32>>> = ids.chunks(3).map(|c| vec![c[0].clone()]).collect();
    let classes = zero_shot::class_embeddings(&model, &single, 64);
    let probs = zero_shot::probabilities(img, classes, scale);
    assert_close(
        "zs_probs_single",
        &host(probs),
        r.values("zs_probs_single"),
        1e-5,
    );
}

#[test]
fn coop_context_output_and_gradient_match_reference() {
    let r = reference();
    let model = load(Naming::HuggingFace);
    let ad = Device::flex().autodiff();
    let ctx: Tensor<2> = r.tensor("coop_ctx", &ad);
    let ctx = ctx.require_grad();
    let batch = TokenBatch::new(&r.ids["coop_input_ids"]);
    let [m, d] = ctx.dims();
    let out = coft::clip::model::l2_normalize(model.text.forward_with_context(
        &batch,
        ctx.clone().reshape([1, m, d]),
        1,
    ));
    assert_close(
        "coop_text_embeds",
        &host(out.clone().inner()),
        r.values("coop_text_embeds"),
        1e-4,
    );
    let w: Tensor<2> = r.tensor("coop_w", &ad);
    let grads = (out * w).sum().backward();
    let g = ctx.grad(&grads).expect("gradient reaches the context");
    assert_close("coop_grad_ctx", &host(g), r.values("coop_grad_ctx"), 1e-4);
}

#[test]
fn deep_and_shallow_visual_prompts_match_reference() {
    let r = reference();
    let model = load(Naming::HuggingFace);
    let ad = Device::flex().autodiff();
    let pixels: Tensor<4> = r.tensor("pixel_values", &Device::flex());
    let all: Tensor<3> = r.tensor("vpt_prompts", &ad);
    for (name, prompts, grad_name) in [
        ("vpt_image_embeds", all.clone().require_grad(), "vpt_grad"),
        (
            "vpt_shallow_image_embeds",
            all.narrow(0, 0, 1).require_grad(),
            "vpt_shallow_grad",
        ),
    ] {
        let out = model.encode_image(pixels.clone(), Some(&prompts));
        assert_close(name, &host(out.clone().inner()), r.values(name), 1e-4);
        let w: Tensor<2> = r.tensor("vpt_w", &ad);
        let grads = (out * w).sum().backward();
        let g = prompts.grad(&grads).expect("gradient reaches the prompts");
        assert_close(grad_name, &host(g), r.values(grad_name), 1e-4);
    }
}

#[test]
fn saved_weights_reload_identically() {
    let model = load(Naming::OpenAi);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    weights::write_safetensors(&path, &weights::clip_to_hf(&model)).unwrap();
    std::fs::copy(
        fixtures().join("hf/config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let (again, src) = weights::load_model(dir.path().to_str().unwrap(), &Device::flex()).unwrap();
    assert_eq!(src.naming, Some(Naming::HuggingFace));
    let r = reference();
    check_towers(&again, &r);
}

#[test]
fn bad_checkpoints_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let hf = weights::read_safetensors(&fixtures().join("hf/model.safetensors")).unwrap();
    let cfg = coft::clip::ClipConfig::from_hf_file(&fixtures().join("hf/config.json")).unwrap();
    let dev = Device::flex();

    let mut missing = hf.clone();
    missing.remove("vision_model.post_layernorm.bias");
    let e = weights::build_clip(&cfg, missing, &dev)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("vision_model.post_layernorm.bias") && e.contains("[48]"),
        "{e}"
    );

    let mut wrong = hf.clone();
    let t = wrong.get_mut("text_projection.weight").unwrap();
    t.shape = vec![32, 24];
    let e = weights::build_clip(&cfg, wrong, &dev)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("text_projection.weight") && e.contains("[32, 24]") && e.contains("[24, 32]"),
        "{e}"
    );

    let mut extra = hf.clone();
    extra.insert(
        "vision_model.extra_head.weight".into(),
        HostTensor::new(vec![1], vec![0.0]),
    );
    let e = weights::build_clip(&cfg, extra, &dev)
        .unwrap_err()
        .to_string();
    assert!(e.contains("vision_model.extra_head.weight"), "{e}");

    let mut other = TensorMap::new();
    other.insert(
        "encoder.weight".into(),
        HostTensor::new(vec![2], vec![0.0, 1.0]),
    );
    let p = dir.path().join("other.safetensors");
    weights::write_safetensors(&p, &other).unwrap();
    let e = load_files(None, &p, &dev).unwrap_err().to_string();
    assert!(
        e.contains("other.safetensors") && e.contains("not a CLIP checkpoint"),
        "{e}"
    );

    let p = dir.path().join("junk.safetensors");
    std::fs::write(&p, b"definitely not safetensors").unwrap();
    let e = load_files(None, &p, &dev).unwrap_err().to_string();
    assert!(e.contains("junk.safetensors"), "{e}");
}
