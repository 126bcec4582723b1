//! Small shared helpers.

pub mod alloc;
pub mod host_tensor;
pub mod lock;
pub mod matmul;
pub mod npy;

pub use host_tensor::{HostTensor, TensorMap};

use std::io::Write;
use std::path::Path;

/// Index of the largest value of `row`, the first of equal ones (a NaN is never larger, so
/// it is picked only at index 0). 0 for an empty row. The crate's one argmax: predictions,
/// pseudo-labels and accuracies must agree on ties, or an exported classifier's label could
/// differ from the one its run reported.
pub fn argmax<T: PartialOrd>(row: &[T]) -> usize {
    let mut best = 0;
    for (i, x) in row.iter().enumerate() {
        if *x > row[best] {
            best = i;
        }
    }
    best
}

/// [`argmax`] and the value there for each row of a row-major `[n, cols]` matrix.
pub fn argmax_rows(values: &[f32], cols: usize) -> Vec<(usize, f32)> {
    values
        .chunks(cols)
        .map(|row| {
            let best = argmax(row);
            (best, row[best])
        })
        .collect()
}

/// Write a file so that readers see the old content or the new, never a torn one: write a
/// temporary file in the same directory, fsync it, then rename over the target.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    // A failed write (a full disk) removes its temp file and says which file it was.
    let fail = |what: &str, e: std::io::Error| {
        let _ = std::fs::remove_file(&tmp);
        std::io::Error::new(e.kind(), format!("{what} {}: {e}", tmp.display()))
    };
    {
        let mut f = std::fs::File::create(&tmp).map_err(|e| fail("creating", e))?;
        if let Some(e) = injected_write_failure(path) {
            return Err(fail("writing", e));
        }
        f.write_all(bytes).map_err(|e| fail("writing", e))?;
        f.sync_all().map_err(|e| fail("syncing", e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| fail("renaming", e))
}

/// Test hook: `COFT_FAIL_WRITES=SUBSTRING[,SUBSTRING...]` makes every [`write_atomic`] of a
/// file whose name contains one of them fail as a full disk would (ENOSPC), so tests can check what a failed
/// write reports and leaves behind.
fn injected_write_failure(path: &Path) -> Option<std::io::Error> {
    let pattern = std::env::var("COFT_FAIL_WRITES").ok()?;
    let name = path.file_name()?.to_string_lossy();
    pattern
        .split(',')
        .any(|p| !p.is_empty() && name.contains(p))
        .then(|| std::io::Error::new(std::io::ErrorKind::StorageFull, "No space left on device"))
}

/// Whether `path` is one of [`write_atomic`]'s temp files (`.NAME.tmpPID`), left behind only
/// when a process died (or the disk filled) between writing and renaming it.
pub fn is_atomic_temp(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    name.starts_with('.')
        && name.rsplit_once(".tmp").is_some_and(|(stem, pid)| {
            stem.len() > 1 && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())
        })
}

/// The values of a float safetensors tensor (f32, f16 or bf16) as f32; `None` for other
/// dtypes. Checkpoints from PyTorch come in all three.
pub fn safetensors_f32(view: &safetensors::tensor::TensorView<'_>) -> Option<Vec<f32>> {
    use safetensors::Dtype;
    let raw = view.data();
    match view.dtype() {
        Dtype::F32 => Some(
            raw.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        Dtype::F16 => Some(
            raw.chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        ),
        Dtype::BF16 => Some(
            raw.chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        ),
        _ => None,
    }
}

/// The dotted key (`phase1.lr`) of the `key = value` line holding byte `offset` of a TOML
/// text written with `[section]` headers, so that errors name the option rather than a line
/// of the merged text the user never saw.
pub fn toml_key_at(text: &str, offset: usize) -> Option<String> {
    let upto = text.get(..offset.min(text.len()))?;
    let line_start = upto.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    let section = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    Some(match section {
        Some(s) if !s.is_empty() => format!("{s}.{key}"),
        _ => key.to_string(),
    })
}

/// An error and its causes as one line, outermost first, each cause that only repeats text
/// already said left out. Error types that print their source *and* return it as
/// `source()` (a common thiserror pattern) would otherwise say it twice
/// (`x.toml: No such file (os error 2): No such file (os error 2)`).
pub fn error_line(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = String::new();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        let text = e.to_string().replace('\n', " ");
        let text = text.trim();
        if !text.is_empty() && !line.contains(text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(text);
        }
        cause = e.source();
    }
    line
}

#[cfg(test)]
mod error_line_tests {
    #[derive(Debug, thiserror::Error)]
    #[error("{path}: {source}")]
    struct Both {
        path: String,
        source: std::io::Error,
    }

    #[test]
    fn a_cause_already_in_the_message_is_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let e = anyhow::Error::new(Both {
            path: "x.toml".into(),
            source: io,
        })
        .context("resuming");
        assert_eq!(
            super::error_line(e.as_ref()),
            "resuming: x.toml: No such file"
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(super::error_line(plain.as_ref()), "outer: inner");
    }
}
