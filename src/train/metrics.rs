//! Append-only JSON-lines metrics log (`metrics.jsonl` in every stage folder, read by the
//! report). One object per line, written in one call and flushed, so a crash loses at most
//! the line being written; the reader skips such a torn last line and the writer cuts it
//! off before appending again.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Map, Value};

use super::TrainError;

/// One log line: a free-form JSON object (`{"stage": .., "epoch": .., "step": .., "loss": ..}`).
pub type Record = Map<String, Value>;

pub struct MetricsWriter {
    path: PathBuf,
    file: File,
}

impl MetricsWriter {
    /// Open `path` for appending (created with its folder if needed). A torn last line
    /// from an interrupted run is removed first, so every line stays valid JSON.
    pub fn append(path: &Path) -> Result<Self, TrainError> {
        let io = |e| TrainError::io(path, e);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len > 0 {
            let mut last = [0u8];
            file.seek(SeekFrom::Start(len - 1)).map_err(io)?;
            file.read_exact(&mut last).map_err(io)?;
            if last[0] != b'\n' {
                let mut all = Vec::new();
                file.seek(SeekFrom::Start(0)).map_err(io)?;
                file.read_to_end(&mut all).map_err(io)?;
                let keep = all.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                file.set_len(keep as u64).map_err(io)?;
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Append one record; it must serialise to a JSON object. Non-finite floats become
    /// `null` (JSON has no NaN).
    pub fn write<T: Serialize + ?Sized>(&mut self, record: &T) -> Result<(), TrainError> {
        let value = serde_json::to_value(record)
            .map_err(|e| TrainError::in_file(&self.path, format!("metrics record: {e}")))?;
        if !value.is_object() {
            return Err(TrainError::in_file(
                &self.path,
                format!("a metrics record must be a JSON object, got {value}"),
            ));
        }
        let mut line = serde_json::to_vec(&value).expect("a JSON value serialises");
        line.push(b'\n');
        self.file
            .write_all(&line)
            .and_then(|_| self.file.flush())
            .map_err(|e| TrainError::io(&self.path, e))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Every record of a metrics log, in order. A last line without its newline (torn by a
/// crash) is skipped; any other line that is not a JSON object is an error naming it.
pub fn read_metrics(path: &Path) -> Result<Vec<Record>, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    let complete = text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(m)) => out.push(m),
            _ if i + 1 == lines.len() && !complete => {}
            Ok(other) => {
                return Err(TrainError::in_file(
                    path,
                    format!("line {}: not a JSON object: {other}", i + 1),
                ))
            }
            Err(e) => return Err(TrainError::in_file(path, format!("line {}: {e}", i + 1))),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn append_read_and_repair_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/metrics.jsonl");
        {
            let mut w = MetricsWriter::append(&path).unwrap();
            w.write(&json!({"stage": "phase1", "epoch": 0, "step": 1, "loss": 2.5}))
                .unwrap();
            w.write(&json!({"stage": "phase1", "step": 2, "loss": f64::NAN}))
                .unwrap();
            assert!(w.write(&json!([1, 2])).is_err());
        }
        // A crash mid-line.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"stage\": \"pha").unwrap();
        drop(f);
        let recs = read_metrics(&path).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0]["loss"], json!(2.5));
        assert_eq!(recs[1]["loss"], Value::Null);

        let mut w = MetricsWriter::append(&path).unwrap();
        w.write(&json!({"step": 3})).unwrap();
        let recs = read_metrics(&path).unwrap();
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[2]["step"], json!(3));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3);
    }

    #[test]
    fn a_bad_middle_line_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.jsonl");
        std::fs::write(&path, "{\"a\":1}\nnot json\n{\"a\":2}\n").unwrap();
        let err = read_metrics(&path).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
    }
}
