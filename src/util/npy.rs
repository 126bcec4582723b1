//! Minimal NumPy `.npy` (format 1.0) writer and reader for float32 matrices: the
//! embedding output format users load with `numpy.load`.

use std::path::Path;

/// Serialise a row-major `[rows, cols]` f32 matrix.
pub fn encode_f32(data: &[f32], rows: usize, cols: usize) -> Vec<u8> {
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // Magic (6) + version (2) + header length (2) + header + '\n' must be a multiple of 64.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

pub fn write_f32(path: &Path, data: &[f32], rows: usize, cols: usize) -> std::io::Result<()> {
    super::write_atomic(path, &encode_f32(data, rows, cols))
}

/// Why bytes are not a `.npy` [`decode_f32`] reads. The bytes have no name here; callers
/// that read a file add its path.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    #[error("not a .npy file")]
    NotNpy,
    #[error("unsupported .npy version {0}")]
    Version(u8),
    #[error("truncated header")]
    TruncatedHeader,
    #[error("header is not UTF-8")]
    HeaderNotUtf8,
    #[error("only little-endian float32 C-order arrays are supported: {0}")]
    Unsupported(String),
    #[error("no shape in header")]
    NoShape,
    #[error("bad shape {0}")]
    BadShape(String),
    #[error("expected {expected} data bytes, found {found}")]
    Length { expected: usize, found: usize },
}

/// Parse a little-endian float32 C-order `.npy` of rank 1 or 2: `(data, shape)`.
pub fn decode_f32(bytes: &[u8]) -> Result<(Vec<f32>, Vec<usize>), NpyError> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(NpyError::NotNpy);
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(NpyError::Version(v)),
    };
    let header = bytes
        .get(start..start + hlen)
        .ok_or(NpyError::TruncatedHeader)?;
    let header = std::str::from_utf8(header).map_err(|_| NpyError::HeaderNotUtf8)?;
    if !header.contains("'<f4'") || header.contains("'fortran_order': True") {
        return Err(NpyError::Unsupported(header.to_string()));
    }
    let shape_str = header
        .split("'shape':")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or(NpyError::NoShape)?;
    let shape: Vec<usize> = shape_str
        .trim_start_matches([' ', '('])
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|_| NpyError::BadShape(shape_str.to_string()))
        })
        .collect::<Result<_, _>>()?;
    let body = &bytes[start + hlen..];
    let n: usize = shape.iter().product();
    if body.len() != n * 4 {
        return Err(NpyError::Length {
            expected: n * 4,
            found: body.len(),
        });
    }
    let data = body
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok((data, shape))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_alignment() {
        let data: Vec<f32> = (0..6).map(|i| i as f32 * 0.5).collect();
        let bytes = encode_f32(&data, 2, 3);
        let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        let (back, shape) = decode_f32(&bytes).unwrap();
        assert_eq!(back, data);
        assert_eq!(shape, vec![2, 3]);
        assert!(decode_f32(b"garbage!!!!!").is_err());
    }
}
