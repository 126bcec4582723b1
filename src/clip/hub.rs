//! Hugging Face hub download into the standard cache (`$HF_HOME/hub`), so a model fetched
//! once by any HF tool is found offline afterwards.

use std::path::PathBuf;

use super::ClipError;

/// Return `(config.json, model.safetensors)` for a hub id, from the cache or the network.
pub fn fetch(model: &str) -> Result<(Option<PathBuf>, PathBuf), ClipError> {
    let err = |message: String| ClipError::Hub {
        model: model.to_string(),
        message,
    };
    if let Some(found) = cached(model) {
        return Ok(found);
    }
    if std::env::var_os("HF_HUB_OFFLINE").is_some_and(|v| v != "0") {
        return Err(err(format!(
            "not in the local Hugging Face cache ({}) and HF_HUB_OFFLINE is set; pre-fill \
                 the cache on a connected machine (`huggingface-cli download {model}`) or pass \
                 a local model folder",
            hub_cache_dir().map_or("?".into(), |p| p.display().to_string())
        )));
    }
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .build()
        .map_err(|e| err(format!("cannot reach the Hugging Face hub: {e}")))?;
    let repo = api.model(model.to_string());
    let weights = repo.get("model.safetensors").map_err(|e| {
        // The client's error repeats the URL in every layer; its first clause is the cause.
        let reason = e.to_string();
        let reason = reason.lines().next().unwrap_or("").trim();
        let reason = match reason.find(": ") {
            Some(i) if reason.len() > 120 => &reason[..i],
            _ => reason,
        };
        err(format!(
            "not in the local Hugging Face cache ({}) and could not be downloaded (offline? {reason}); \
             pre-fill the cache on a connected machine (`huggingface-cli download {model}`, then copy \
             the cache folder) or pass a local model folder",
            hub_cache_dir().map_or("?".into(), |p| p.display().to_string())
        ))
    })?;
    let config = repo
        .get("config.json")
        .map_err(|e| err(format!("downloading config.json failed: {e}")))?;
    Ok((Some(config), weights))
}

/// Look for a snapshot in the standard cache layout
/// `$HF_HOME/hub/models--{org}--{name}/snapshots/<rev>/`.
pub fn cached(model: &str) -> Option<(Option<PathBuf>, PathBuf)> {
    let root = hub_cache_dir()?;
    let repo = root.join(format!("models--{}", model.replace('/', "--")));
    let rev = std::fs::read_to_string(repo.join("refs").join("main")).ok();
    let snapshots = repo.join("snapshots");
    let dir = match rev {
        Some(r) => snapshots.join(r.trim()),
        None => std::fs::read_dir(&snapshots).ok()?.flatten().next()?.path(),
    };
    let weights = dir.join("model.safetensors");
    weights.is_file().then(|| {
        let cfg = dir.join("config.json");
        (cfg.is_file().then_some(cfg), weights)
    })
}

pub fn hub_cache_dir() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("HF_HUB_CACHE") {
        return Some(PathBuf::from(p));
    }
    if let Ok(p) = std::env::var("HF_HOME") {
        return Some(PathBuf::from(p).join("hub"));
    }
    let home = std::env::var_os("HOME")?;
    Some(
        PathBuf::from(home)
            .join(".cache")
            .join("huggingface")
            .join("hub"),
    )
}
