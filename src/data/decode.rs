//! Robust image decoding to 8-bit RGB.
//!
//! [`decode_rgb`] and [`decode_rgb_bytes`] turn a JPEG, PNG, WebP, BMP, GIF (first frame) or TIFF
//! file into an [`RgbImage`], the way Pillow's `Image.open(p)` + `ImageOps.exif_transpose` +
//! `.convert("RGB")` does:
//!
//! * the format is sniffed from the content, never from the file extension;
//! * greyscale is replicated to three channels; alpha (grey+alpha, RGBA, palette transparency) is
//!   **dropped, not composited** (as `convert("RGB")`, OpenAI's `clip` and transformers 4.x do;
//!   transformers 5.x composites onto white instead);
//! * palette images are expanded through their palette; CMYK JPEGs are converted with the same
//!   naive formula as Pillow (`R = C'·K'/255` on the stored, Adobe-inverted values);
//! * 16-bit samples keep their high byte (`v >> 8`), which is what Pillow does for 16-bit RGB(A)
//!   PNGs. For 16-bit *greyscale* Pillow's `convert("RGB")` clips every value above 255 to 255
//!   (whitening the image); we deliberately keep the high byte there too;
//! * the EXIF orientation (JPEG, PNG `eXIf`, WebP, TIFF) is applied. The Hugging Face CLIP
//!   processor does not do this; we do because real photos need it;
//! * declared dimensions are checked against [`DecodeLimits`] *before* the pixel buffer is
//!   allocated, so decompression bombs are refused cheaply;
//! * a JPEG whose entropy-coded data ends before its end-of-image marker is reported as
//!   truncated (the `image` crate would silently fill the rest with grey). Pillow also refuses
//!   truncated JPEGs, except a baseline one that lacks only the final 2-byte EOI marker, which
//!   Pillow accepts and we refuse.
//!
//! No byte sequence makes these functions panic (a panic inside a third-party decoder is caught
//! and reported as corrupt data), and they keep no shared state, so they are safe to call from
//! many threads at once.

use std::fmt;
use std::io::{Cursor, Read};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, RgbImage};

/// Pillow raises `DecompressionBombError` above `2 * Image.MAX_IMAGE_PIXELS` = 178,956,970 pixels.
pub const PILLOW_MAX_PIXELS: u64 = 178_956_970;

/// Limits applied before any pixel buffer is allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest accepted `width * height` (default [`PILLOW_MAX_PIXELS`]).
    pub max_pixels: u64,
    /// Largest allocation, in bytes, the decoder may make: the decoded buffer in the file's own
    /// pixel format (e.g. RGBA16 = 8 bytes a pixel) plus the decoder's intermediate buffers
    /// (default 2 GiB, enough for any image under `max_pixels` in 8-bit RGBA).
    pub max_alloc: u64,
    /// Smallest accepted width and height (default 1: every image that decodes is used, as
    /// the reference implementation resizes any size; 0 is treated as 1).
    pub min_side: u32,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_pixels: PILLOW_MAX_PIXELS,
            max_alloc: 2 << 30,
            min_side: 1,
        }
    }
}

/// Why an image could not be decoded. Every message is one line that names the file.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The file has no bytes at all.
    #[error("{}: empty file (0 bytes)", .path.display())]
    Empty { path: PathBuf },
    /// The file could not be read (missing, permission denied, a directory, ...).
    #[error("{}: cannot read file: {error}", .path.display())]
    Io {
        path: PathBuf,
        /// The underlying error; `error.kind()` tells e.g. `NotFound` from `PermissionDenied`.
        error: std::io::Error,
    },
    /// The content is not recognised as any image format.
    #[error("{}: not an image (unknown format{})", .path.display(), FirstBytes(.head))]
    UnknownFormat {
        path: PathBuf,
        /// Up to the first 8 bytes, for the message.
        head: Vec<u8>,
    },
    /// A recognised image format (or feature of one) that is not supported.
    #[error("{}: unsupported image: {what}", .path.display())]
    Unsupported { path: PathBuf, what: String },
    /// The data is corrupt or truncated.
    #[error("{}: corrupt or truncated {format} data: {reason}", .path.display())]
    Corrupt {
        path: PathBuf,
        format: &'static str,
        reason: String,
    },
    /// The declared dimensions exceed [`DecodeLimits::max_pixels`] or [`DecodeLimits::max_alloc`].
    #[error("{}: image too large: {width}x{height} ({reason})", .path.display())]
    TooLarge {
        path: PathBuf,
        width: u32,
        height: u32,
        reason: String,
    },
    /// A side is shorter than [`DecodeLimits::min_side`].
    #[error("{}: image too small: {width}x{height} (minimum side {min_side})", .path.display())]
    TooSmall {
        path: PathBuf,
        width: u32,
        height: u32,
        min_side: u32,
    },
}

impl DecodeError {
    /// The file the error is about (`<memory>` for [`decode_rgb_bytes`]).
    pub fn path(&self) -> &Path {
        match self {
            Self::Empty { path }
            | Self::Io { path, .. }
            | Self::UnknownFormat { path, .. }
            | Self::Unsupported { path, .. }
            | Self::Corrupt { path, .. }
            | Self::TooLarge { path, .. }
            | Self::TooSmall { path, .. } => path,
        }
    }
}

struct FirstBytes<'a>(&'a [u8]);

impl fmt::Display for FirstBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return Ok(());
        }
        f.write_str("; starts with")?;
        for b in self.0 {
            write!(f, " {b:02x}")?;
        }
        Ok(())
    }
}

/// The path used in errors from [`decode_rgb_bytes`].
pub const MEMORY_PATH: &str = "<memory>";

/// Reads and decodes the image at `path` to 8-bit RGB (see the module docs for the rules).
pub fn decode_rgb(path: &Path, limits: &DecodeLimits) -> Result<RgbImage, DecodeError> {
    let io = |error| DecodeError::Io {
        path: path.to_path_buf(),
        error,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    // Sniff the first bytes before reading the whole file, so that a large non-image file is
    // refused without being loaded.
    let mut bytes = Vec::new();
    (&mut file)
        .take(SNIFF_LEN)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if !bytes.is_empty() && image::guess_format(&bytes).is_ok() {
        file.read_to_end(&mut bytes).map_err(io)?;
    }
    decode_rgb_bytes_named(&bytes, path, limits)
}

/// Enough bytes for `image::guess_format` (which looks at 16 at most).
const SNIFF_LEN: u64 = 64;

/// Decodes an in-memory image to 8-bit RGB; errors name the path `<memory>`.
pub fn decode_rgb_bytes(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, DecodeError> {
    decode_rgb_bytes_named(bytes, Path::new(MEMORY_PATH), limits)
}

/// Decodes an in-memory image to 8-bit RGB; errors name `path` (which is not read).
pub fn decode_rgb_bytes_named(
    bytes: &[u8],
    path: &Path,
    limits: &DecodeLimits,
) -> Result<RgbImage, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty {
            path: path.to_path_buf(),
        });
    }
    let format = match image::guess_format(bytes) {
        Ok(f) => f,
        Err(_) => {
            return Err(DecodeError::UnknownFormat {
                path: path.to_path_buf(),
                head: bytes[..bytes.len().min(8)].to_vec(),
            })
        }
    };
    let name = match format_name(format) {
        Some(n) => n,
        None => {
            return Err(DecodeError::Unsupported {
                path: path.to_path_buf(),
                what: format!(
                    "{format:?} files are not accepted (JPEG, PNG, WebP, BMP, GIF, TIFF are)"
                ),
            })
        }
    };
    let ctx = Ctx { path, format: name };
    if format == ImageFormat::Jpeg && !jpeg_reaches_eoi(bytes) {
        return Err(
            ctx.corrupt("truncated: the data ends before the end-of-image marker".to_string())
        );
    }
    match catch_unwind(AssertUnwindSafe(|| {
        decode_inner(bytes, format, limits, &ctx)
    })) {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(ctx.corrupt(format!("the decoder panicked: {}", one_line(&msg))))
        }
    }
}

struct Ctx<'a> {
    path: &'a Path,
    format: &'static str,
}

impl Ctx<'_> {
    fn corrupt(&self, reason: String) -> DecodeError {
        DecodeError::Corrupt {
            path: self.path.to_path_buf(),
            format: self.format,
            reason,
        }
    }

    fn too_large(&self, (width, height): (u32, u32), reason: String) -> DecodeError {
        DecodeError::TooLarge {
            path: self.path.to_path_buf(),
            width,
            height,
            reason,
        }
    }

    fn image_error(&self, e: ImageError, dims: Option<(u32, u32)>) -> DecodeError {
        match e {
            ImageError::Unsupported(u) => DecodeError::Unsupported {
                path: self.path.to_path_buf(),
                what: format!("{}: {}", self.format, one_line(&u.to_string())),
            },
            ImageError::Limits(l) => match dims {
                Some(dims) => self.too_large(dims, one_line(&l.to_string())),
                // A decoder's own limit hit while reading the header (e.g. an oversized TIFF
                // directory): the size is unknown, so this is reported as bad data.
                None => self.corrupt(format!(
                    "header exceeds a limit: {}",
                    one_line(&l.to_string())
                )),
            },
            // The source is in memory, so an I/O error means the data ended early.
            ImageError::IoError(io) => self.corrupt(one_line(&io.to_string())),
            other => self.corrupt(one_line(&other.to_string())),
        }
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn format_name(format: ImageFormat) -> Option<&'static str> {
    Some(match format {
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Png => "PNG",
        ImageFormat::WebP => "WebP",
        ImageFormat::Bmp => "BMP",
        ImageFormat::Gif => "GIF",
        ImageFormat::Tiff => "TIFF",
        _ => return None,
    })
}

fn decode_inner(
    bytes: &[u8],
    format: ImageFormat,
    limits: &DecodeLimits,
    ctx: &Ctx<'_>,
) -> Result<RgbImage, DecodeError> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    // No limits while only the header is read; the real ones are set once the size is known.
    reader.no_limits();
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| ctx.image_error(e, None))?;
    let dims = decoder.dimensions();
    let (w, h) = dims;
    let pixels = u64::from(w) * u64::from(h);
    if pixels > limits.max_pixels {
        return Err(ctx.too_large(
            dims,
            format!("{pixels} pixels, limit {}", limits.max_pixels),
        ));
    }
    let min_side = limits.min_side.max(1);
    if w < min_side || h < min_side {
        return Err(DecodeError::TooSmall {
            path: ctx.path.to_path_buf(),
            width: w,
            height: h,
            min_side,
        });
    }
    let total = decoder.total_bytes();
    if total > limits.max_alloc {
        return Err(ctx.too_large(
            dims,
            format!(
                "decoding needs {total} bytes, limit {} bytes",
                limits.max_alloc
            ),
        ));
    }
    let mut lim = image::Limits::no_limits();
    lim.max_alloc = Some(limits.max_alloc - total);
    decoder
        .set_limits(lim)
        .map_err(|e| ctx.image_error(e, Some(dims)))?;
    // A broken EXIF block is not worth refusing the image for.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let img = DynamicImage::from_decoder(decoder).map_err(|e| ctx.image_error(e, Some(dims)))?;
    let rgb = to_rgb8_pil(img);
    Ok(apply_orientation(rgb, orientation))
}

fn apply_orientation(rgb: RgbImage, orientation: Orientation) -> RgbImage {
    if orientation == Orientation::NoTransforms {
        return rgb;
    }
    let mut img = DynamicImage::ImageRgb8(rgb);
    img.apply_orientation(orientation);
    img.into_rgb8()
}

/// `convert("RGB")` semantics: alpha dropped, grey replicated, 16-bit samples keep the high byte.
pub fn to_rgb8_pil(img: DynamicImage) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let from_fn = |src: &[u8], step: usize, grey: bool| -> RgbImage {
        let mut out = Vec::with_capacity(w as usize * h as usize * 3);
        for px in src.chunks_exact(step) {
            if grey {
                out.extend_from_slice(&[px[0], px[0], px[0]]);
            } else {
                out.extend_from_slice(&px[..3]);
            }
        }
        RgbImage::from_raw(w, h, out).expect("buffer size matches dimensions")
    };
    let from_fn16 = |src: &[u16], step: usize, grey: bool| -> RgbImage {
        let mut out = Vec::with_capacity(w as usize * h as usize * 3);
        for px in src.chunks_exact(step) {
            let hi = |v: u16| (v >> 8) as u8;
            if grey {
                let g = hi(px[0]);
                out.extend_from_slice(&[g, g, g]);
            } else {
                out.extend_from_slice(&[hi(px[0]), hi(px[1]), hi(px[2])]);
            }
        }
        RgbImage::from_raw(w, h, out).expect("buffer size matches dimensions")
    };
    match img {
        DynamicImage::ImageRgb8(x) => x,
        DynamicImage::ImageRgba8(x) => from_fn(x.as_raw(), 4, false),
        DynamicImage::ImageLuma8(x) => from_fn(x.as_raw(), 1, true),
        DynamicImage::ImageLumaA8(x) => from_fn(x.as_raw(), 2, true),
        DynamicImage::ImageRgb16(x) => from_fn16(x.as_raw(), 3, false),
        DynamicImage::ImageRgba16(x) => from_fn16(x.as_raw(), 4, false),
        DynamicImage::ImageLuma16(x) => from_fn16(x.as_raw(), 1, true),
        DynamicImage::ImageLumaA16(x) => from_fn16(x.as_raw(), 2, true),
        // Float images (e.g. floating-point TIFF): the crate's clamp-and-round conversion.
        other => other.to_rgb8(),
    }
}

/// Walks the JPEG marker structure and reports whether an end-of-image marker follows the
/// entropy-coded data of the scan(s). Only the structure is checked; the decoder checks the rest.
fn jpeg_reaches_eoi(data: &[u8]) -> bool {
    let n = data.len();
    let mut i = 2; // past SOI
    let mut seen_scan = false;
    loop {
        // Find the next marker, skipping stray bytes (tolerated by libjpeg) and 0xFF fill bytes.
        while i < n && data[i] != 0xFF {
            i += 1;
        }
        while i < n && data[i] == 0xFF {
            i += 1;
        }
        if i >= n {
            return false;
        }
        let marker = data[i];
        i += 1;
        match marker {
            0xD9 => return seen_scan,
            // Standalone markers (and a stuffed zero out of place).
            0x00 | 0x01 | 0xD0..=0xD8 => continue,
            _ => {}
        }
        if i + 2 > n {
            return false;
        }
        let len = usize::from(u16::from_be_bytes([data[i], data[i + 1]]));
        i += len.max(2);
        if marker != 0xDA {
            continue;
        }
        seen_scan = true;
        // Entropy-coded data: runs until a marker other than a stuffed 0xFF00 or RSTn.
        loop {
            match data
                .get(i..)
                .and_then(|d| d.iter().position(|&b| b == 0xFF))
            {
                None => return false,
                Some(p) => i += p,
            }
            let Some(&next) = data.get(i + 1) else {
                return false;
            };
            match next {
                0x00 | 0xD0..=0xD7 => i += 2,
                0xFF => i += 1,
                _ => break, // a real marker at i; handled by the outer loop
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eoi_walk() {
        // SOI, SOS(len 2), data with stuffing and RST, EOI
        let ok = [
            0xFF, 0xD8, 0xFF, 0xDA, 0x00, 0x02, 0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD0, 0x56, 0xFF,
            0xD9,
        ];
        assert!(jpeg_reaches_eoi(&ok));
        assert!(!jpeg_reaches_eoi(&ok[..ok.len() - 2]));
        assert!(!jpeg_reaches_eoi(&ok[..ok.len() - 1]));
        // EOI without any scan is not complete
        assert!(!jpeg_reaches_eoi(&[0xFF, 0xD8, 0xFF, 0xD9]));
        // trailing garbage after EOI is fine
        let mut trailing = ok.to_vec();
        trailing.extend_from_slice(b"garbage");
        assert!(jpeg_reaches_eoi(&trailing));
        // a segment length that runs past the end
        assert!(!jpeg_reaches_eoi(&[
            0xFF, 0xD8, 0xFF, 0xE1, 0xFF, 0xFF, 0x00
        ]));
    }

    #[test]
    fn sixteen_bit_keeps_high_byte() {
        let img =
            image::ImageBuffer::<image::Luma<u16>, _>::from_raw(4, 1, vec![0u16, 255, 256, 0xFF7F])
                .unwrap();
        let rgb = to_rgb8_pil(DynamicImage::ImageLuma16(img));
        assert_eq!(rgb.as_raw(), &[0, 0, 0, 0, 0, 0, 1, 1, 1, 255, 255, 255]);
    }
}
