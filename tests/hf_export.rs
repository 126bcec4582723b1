//! `coft export --format hf`: a tiny finished run (the demo's CLIP, 4 classes x 8
//! synthetic 16x16 PNGs, 2 + 2 epochs; about a second) written as Hugging Face
//! `CLIPVisionModelWithProjection` folders + heads, read back through coft's own Hugging Face
//! loader, must give `coft predict`'s probabilities exactly: the export only re-lays the same
//! f32 values out (q|k|v split, in->out transposed, the patch matrix as a convolution), so
//! reading it back restores the same tensors and the same arithmetic runs.
//!
//! `tools/check_hf_export.py` checks the same folder against `transformers` (by hand).

use std::path::{Path, PathBuf};

use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor, TensorData};
use coft::clip::preprocess::{preprocess_into, PreprocessConfig};
use coft::clip::weights::{load_hf_vision, read_safetensors};

mod common;

/// `[(path, pred, [probability as written])]` of a predict CSV, and its header.
fn read_csv(text: &str) -> (String, Vec<(String, String, Vec<String>)>) {
    let mut lines = text.lines();
    let header = lines.next().unwrap().to_string();
    let rows = lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (
                f[0].to_string(),
                f[1].to_string(),
                f[2..].iter().map(|s| s.to_string()).collect(),
            )
        })
        .collect();
    (header, rows)
}

fn train_tiny(root: &Path) -> (PathBuf, PathBuf) {
    let data = common::synthetic_shapes(&root.join("data"), 8, 3, 0.3, 20);
    let run = root.join("run");
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("demo/model");
    common::coft_ok(&[
        "-q",
        "train",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--k",
        "4",
        "--threads",
        "2",
        "--set",
        "phase1.min_steps=0",
        "--set",
        "phase1.epochs=2",
        "--set",
        "phase2.epochs=2",
        "--set",
        "prompts.n_ctx=4",
        "--set",
        "prompts.vpt_tokens=2",
        "--set",
        "phase1.batch_size=4",
        "--set",
        "phase2.batch_size=8",
    ]);
    (data, run)
}

#[test]
fn hf_export_reloads_through_the_hf_loader_and_matches_predict_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (data, run) = train_tiny(dir.path());
    let hf = dir.path().join("hf");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_coft"))
        .args([
            "export",
            run.to_str().unwrap(),
            "--out",
            hf.to_str().unwrap(),
        ])
        .args(["--format", "hf"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{said}");
    assert!(said.contains("exported 4 classes, 2 models"), "{said}");

    // The layout transformers expects, and the description.
    for f in ["ensemble.json", "classes.txt"] {
        assert!(hf.join(f).is_file(), "missing {f}");
    }
    let desc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(hf.join("ensemble.json")).unwrap()).unwrap();
    assert_eq!(desc["format"], "coft-hf-ensemble");
    assert_eq!(desc["members"], serde_json::json!(["f1", "f2"]));
    let classes: Vec<String> = std::fs::read_to_string(hf.join("classes.txt"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(classes, ["blue", "green", "red", "yellow"]);
    for m in ["f1", "f2"] {
        let mdir = hf.join(m);
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(mdir.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["model_type"], "clip_vision_model");
        assert_eq!(
            cfg["architectures"],
            serde_json::json!(["CLIPVisionModelWithProjection"])
        );
        assert_eq!(cfg["image_size"], 16);
        assert_eq!(cfg["projection_dim"], 32);
        let pp: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(mdir.join("preprocessor_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(pp["size"]["shortest_edge"], 16);
        assert_eq!(
            pp["crop_size"],
            serde_json::json!({"height": 16, "width": 16})
        );
        assert_eq!(pp["resample"], 3);
        assert_eq!(
            pp["image_mean"],
            serde_json::json!([0.48145466, 0.4578275, 0.40821073])
        );
        // Only PyTorch names and layouts: no fused q|k|v, no [in, out] matrices.
        let w = read_safetensors(&mdir.join("model.safetensors")).unwrap();
        assert!(w
            .keys()
            .all(|k| k.starts_with("vision_model.") || k == "visual_projection.weight"));
        assert_eq!(
            w["vision_model.embeddings.patch_embedding.weight"].shape,
            [32, 3, 4, 4]
        );
        assert_eq!(
            w["vision_model.encoder.layers.0.self_attn.q_proj.weight"].shape,
            [32, 32]
        );
        assert_eq!(w["visual_projection.weight"].shape, [32, 32]);
        let head = read_safetensors(&mdir.join("head.safetensors")).unwrap();
        assert_eq!(head.keys().collect::<Vec<_>>(), ["bias", "weight"]);
        assert_eq!(head["weight"].shape, [4, 32]);
        assert_eq!(head["bias"].shape, [4]);
    }

    // Images of other sizes too, so that the resize and the crop take part.
    let imgs = dir.path().join("imgs");
    let sizes = [(16, 16), (24, 20), (40, 16), (13, 31), (50, 50)];
    let mut files: Vec<PathBuf> = walk(&data);
    files.sort();
    for (i, f) in files.iter().enumerate() {
        let rel = f.strip_prefix(&data).unwrap();
        let out = imgs.join(rel);
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        let (w, h) = sizes[i % sizes.len()];
        let img = image::open(f).unwrap().to_rgb8();
        image::imageops::resize(&img, w, h, image::imageops::FilterType::Triangle)
            .save(&out)
            .unwrap();
    }
    let data = imgs;

    // What `coft predict` says with the run itself.
    let (header, rows) = read_csv(&common::coft_ok(&[
        "-q",
        "predict",
        "--run",
        run.to_str().unwrap(),
        "--images",
        data.to_str().unwrap(),
        "--out",
        "-",
    ]));
    assert_eq!(header, "path,pred,blue,green,red,yellow");
    assert_eq!(rows.len(), 32);

    // Each member folder through coft's Hugging Face loader, its head from head.safetensors,
    // the preprocessing of the run, the mean of the members' softmax.
    let dev = Device::flex();
    let pp = PreprocessConfig::clip(16);
    let b = rows.len();
    let mut pixels = vec![0f32; b * pp.tensor_len()];
    for ((name, _, _), out) in rows.iter().zip(pixels.chunks_mut(pp.tensor_len())) {
        let rgb = coft::data::decode::decode_rgb(&data.join(name), &Default::default()).unwrap();
        preprocess_into(&rgb, &pp, out);
    }
    let mut per_member = Vec::new();
    for m in ["f1", "f2"] {
        let (vision, d) = load_hf_vision(&hf.join(m), &dev).unwrap();
        assert_eq!(d, 32);
        let head = read_safetensors(&hf.join(m).join("head.safetensors")).unwrap();
        let (w, bias) = (&head["weight"], &head["bias"]);
        // PyTorch's [C, D] as burn's [D, C] (input-major), materialised as training stores it.
        let wt: Vec<f32> = (0..d * 4).map(|k| w.data[(k % 4) * d + k / 4]).collect();
        let w: Tensor<2> = Tensor::from_data(TensorData::new(wt, [d, 4]), &dev);
        let bias: Tensor<1> = Tensor::from_data(TensorData::new(bias.data.clone(), [4]), &dev);
        let clf = coft::method::phase2::EncoderHead {
            vision,
            head: burn::nn::Linear {
                weight: burn::module::Param::from_tensor(w),
                bias: Some(burn::module::Param::from_tensor(bias)),
            },
        };
        let px: Tensor<4> =
            Tensor::from_data(TensorData::new(pixels.clone(), [b, 3, 16, 16]), &dev);
        let p: Vec<f32> = softmax(clf.forward(px), 1)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        per_member.push(p);
    }
    let mean: Vec<f32> = (0..b * 4)
        .map(|j| per_member.iter().map(|p| p[j]).sum::<f32>() / 2.0)
        .collect();
    for (r, (name, pred, probs)) in rows.iter().enumerate() {
        let ours: Vec<String> = mean[r * 4..(r + 1) * 4]
            .iter()
            .map(|x| x.to_string())
            .collect();
        assert_eq!(
            &ours, probs,
            "{name}: HF folder reloaded vs coft predict --run"
        );
        assert_eq!(
            &classes[coft::util::argmax(&mean[r * 4..(r + 1) * 4])],
            pred
        );
    }

    // `coft predict --model` reads the Hugging Face folder too: the same CSV, byte for byte.
    let by_run = common::coft_ok(&[
        "-q",
        "predict",
        "--run",
        run.to_str().unwrap(),
        "--images",
        data.to_str().unwrap(),
        "--out",
        "-",
    ]);
    let by_hf = common::coft_ok(&[
        "-q",
        "predict",
        "--model",
        hf.to_str().unwrap(),
        "--images",
        data.to_str().unwrap(),
        "--out",
        "-",
    ]);
    assert_eq!(by_run, by_hf);

    // The loader refuses what it cannot reproduce, naming the file and the field.
    let bad = dir.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(common::fixtures().join("hf").join(f), bad.join(f)).unwrap();
    }
    let err = load_hf_vision(&bad, &dev).err().unwrap().to_string();
    assert!(
        err.contains("config.json") && err.contains("clip_vision_model"),
        "{err}"
    );
    let pp_path = hf.join("f2/preprocessor_config.json");
    let text = std::fs::read_to_string(&pp_path).unwrap();
    std::fs::write(&pp_path, text.replace("\"resample\": 3", "\"resample\": 2")).unwrap();
    let err = coft::Classifier::load(&hf).err().unwrap().to_string();
    assert!(
        err.contains("f2/preprocessor_config.json") && err.contains("resample"),
        "{err}"
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
