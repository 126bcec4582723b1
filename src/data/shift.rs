//! Synthetic domain shifts for the method benchmark: transformations that keep an image's
//! information but break a zero-shot head trained on upright, natural-colour images.
//!
//! The benchmark writes the shifted images once into a cache folder as a class-folder
//! dataset (lossless PNG), so every command (zero-shot, train, eval) sees the same pixels
//! through the ordinary data path.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use image::RgbImage;

use super::decode::{decode_rgb, DecodeLimits};

/// A pixel-level shift applied identically to the adaptation pool and the test images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shift {
    /// No shift: the images as they are.
    None,
    /// Upside down (vertical flip).
    Vflip,
    /// Colour channels reversed (RGB -> BGR).
    Channels,
    /// Rotated 90 degrees clockwise.
    Rot90,
}

impl Shift {
    pub fn apply(self, img: RgbImage) -> RgbImage {
        match self {
            Shift::None => img,
            Shift::Vflip => image::imageops::flip_vertical(&img),
            Shift::Rot90 => image::imageops::rotate90(&img),
            Shift::Channels => {
                let mut img = img;
                for p in img.pixels_mut() {
                    p.0.reverse();
                }
                img
            }
        }
    }
}

impl FromStr for Shift {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "none" => Shift::None,
            "vflip" => Shift::Vflip,
            "channels" => Shift::Channels,
            "rot90" => Shift::Rot90,
            _ => {
                return Err(format!(
                    "unknown shift `{s}` (expected vflip, channels, rot90 or none)"
                ))
            }
        })
    }
}

impl fmt::Display for Shift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Shift::None => "none",
            Shift::Vflip => "vflip",
            Shift::Channels => "channels",
            Shift::Rot90 => "rot90",
        })
    }
}

/// Writes `samples` (path, label) shifted into `out/<class>/<n>.png` and returns the folder.
/// Idempotent: a folder with a `DONE` marker is reused as it is; a half-written one is
/// rebuilt from scratch, so an interrupted preparation never leaves a partial dataset.
pub fn materialise(
    samples: &[(PathBuf, usize)],
    classes: &[String],
    shift: Shift,
    out: &Path,
) -> anyhow::Result<PathBuf> {
    use anyhow::Context;
    use rayon::prelude::*;
    if out.join("DONE").is_file() {
        return Ok(out.to_path_buf());
    }
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("clearing {}", out.display()))?;
    }
    for c in classes {
        std::fs::create_dir_all(out.join(c))
            .with_context(|| format!("creating {}", out.join(c).display()))?;
    }
    let limits = DecodeLimits::default();
    samples
        .par_iter()
        .enumerate()
        .try_for_each(|(i, (path, label))| -> anyhow::Result<()> {
            let img = decode_rgb(path, &limits)?;
            let dst = out.join(&classes[*label]).join(format!("{i:06}.png"));
            shift
                .apply(img)
                .save(&dst)
                .with_context(|| format!("writing {}", dst.display()))
        })?;
    crate::util::write_atomic(&out.join("DONE"), b"")?;
    Ok(out.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img() -> RgbImage {
        RgbImage::from_fn(2, 3, |x, y| image::Rgb([x as u8, y as u8, 7]))
    }

    #[test]
    fn shifts_move_pixels_as_named() {
        let v = Shift::Vflip.apply(img());
        assert_eq!(v.get_pixel(1, 0).0, [1, 2, 7]);
        let c = Shift::Channels.apply(img());
        assert_eq!(c.get_pixel(1, 2).0, [7, 2, 1]);
        let r = Shift::Rot90.apply(img());
        assert_eq!(r.dimensions(), (3, 2));
        // Clockwise: the bottom-left pixel (0, 2) lands at the top-left.
        assert_eq!(r.get_pixel(0, 0).0, [0, 2, 7]);
        assert_eq!(Shift::None.apply(img()), img());
        for s in ["vflip", "channels", "rot90", "none"] {
            assert_eq!(s.parse::<Shift>().unwrap().to_string(), s);
        }
        assert!("upside".parse::<Shift>().is_err());
    }
}
