//! Seeded synthetic image tasks for the method lab: class folders of small PNGs whose class
//! is a shape's colour or the shape's kind, drawn clean (for pre-training a small CLIP) or
//! under a domain shift (the unlabeled pool U and the test set). Tasks of different kinds
//! (class count, image size, what the class is, what the shift does) keep the lab from
//! tuning the method to one of them.

use std::path::Path;

use rand::{RngExt, SeedableRng};

/// What decides an image's class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClassKind {
    /// The colour of a disc or square (random shape, position, size).
    Colour,
    /// The kind of shape (random colour, position, size).
    Shape,
}

/// A domain shift applied after drawing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shift {
    /// Blend the shape's colour towards grey (0: none, 1: grey).
    pub fade: f32,
    /// Box-blur radius in pixels (0: none).
    pub blur: u32,
    /// Contrast towards mid-grey (1: unchanged).
    pub contrast: f32,
    /// Added to each channel after the contrast change.
    pub cast: [i32; 3],
    /// Uniform per-pixel noise amplitude.
    pub noise: i32,
    /// Gamma applied to the whole image (1: none; > 1 darkens).
    pub gamma: f32,
    /// Grey stripes drawn across the image at random rows (occlusion).
    pub stripes: u32,
}

impl Shift {
    /// No shift, a little noise: the pre-training domain.
    pub const CLEAN: Shift = Shift {
        fade: 0.0,
        blur: 0,
        contrast: 1.0,
        cast: [0, 0, 0],
        noise: 20,
        gamma: 1.0,
        stripes: 0,
    };
}

pub const COLOURS: [(&str, [u8; 3]); 8] = [
    ("red", [220, 30, 30]),
    ("green", [30, 200, 40]),
    ("blue", [30, 50, 220]),
    ("yellow", [230, 220, 30]),
    ("cyan", [30, 210, 220]),
    ("magenta", [210, 40, 200]),
    ("orange", [240, 140, 20]),
    ("purple", [120, 40, 160]),
];

pub const SHAPES: [&str; 6] = ["circle", "square", "triangle", "cross", "ring", "bar"];

/// The class names of a task of `kind` with `classes` classes.
pub fn class_names(kind: ClassKind, classes: usize) -> Vec<String> {
    match kind {
        ClassKind::Colour => COLOURS
            .iter()
            .take(classes)
            .map(|c| c.0.to_string())
            .collect(),
        ClassKind::Shape => SHAPES.iter().take(classes).map(|s| s.to_string()).collect(),
    }
}

fn inside(shape: usize, dx: i32, dy: i32, r: i32) -> bool {
    match shape {
        // circle
        0 => dx * dx + dy * dy <= r * r,
        // square
        1 => dx.abs() <= r && dy.abs() <= r,
        // triangle, apex up
        2 => dy <= r && dy >= -r && 2 * dx.abs() <= dy + r,
        // cross (plus), arms a third of the size wide
        3 => {
            let w = (r / 3).max(1);
            (dx.abs() <= w && dy.abs() <= r) || (dy.abs() <= w && dx.abs() <= r)
        }
        // ring
        4 => {
            let d = dx * dx + dy * dy;
            let inner = (r * 3 / 5).max(1);
            d <= r * r && d > inner * inner
        }
        // horizontal bar
        _ => dx.abs() <= r && dy.abs() <= (r / 3).max(1),
    }
}

/// Draws `per_class` images of each class into `dir/<class>/NNN.png` (size `size` pixels),
/// seeded by `seed`, under `shift`. Returns the class names.
pub fn write_task(
    dir: &Path,
    kind: ClassKind,
    classes: usize,
    per_class: usize,
    size: u32,
    seed: u64,
    shift: &Shift,
) -> std::io::Result<Vec<String>> {
    write_task_counts(dir, kind, &vec![per_class; classes], size, seed, shift)
}

/// Like [`write_task`] with `counts[c]` images of class `c` (a long-tailed task); equal
/// counts draw exactly the images [`write_task`] draws.
pub fn write_task_counts(
    dir: &Path,
    kind: ClassKind,
    counts: &[usize],
    size: u32,
    seed: u64,
    shift: &Shift,
) -> std::io::Result<Vec<String>> {
    let names = class_names(kind, counts.len());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let s = size as i32;
    for (c, name) in names.iter().enumerate() {
        let class_dir = dir.join(name);
        std::fs::create_dir_all(&class_dir)?;
        for i in 0..counts[c] {
            let r: i32 = rng.random_range(s / 6..s / 3 + 1);
            let (cx, cy): (i32, i32) = (rng.random_range(r..s - r), rng.random_range(r..s - r));
            let (shape, rgb) = match kind {
                ClassKind::Colour => (rng.random_range(0..2usize), COLOURS[c].1),
                ClassKind::Shape => {
                    let rgb = [
                        rng.random_range(30..230u8),
                        rng.random_range(30..230u8),
                        rng.random_range(30..230u8),
                    ];
                    (c, rgb)
                }
            };
            let jitter: [i32; 3] = [
                rng.random_range(-25..26),
                rng.random_range(-25..26),
                rng.random_range(-25..26),
            ];
            let background: i32 = rng.random_range(70..170);
            let mut px = vec![[0f32; 3]; (s * s) as usize];
            for y in 0..s {
                for x in 0..s {
                    let v = &mut px[(y * s + x) as usize];
                    let grey = (background + rng.random_range(-10..=10)) as f32;
                    if inside(shape, x - cx, y - cy, r) {
                        for k in 0..3 {
                            let base = f32::from(rgb[k]) * (1.0 - shift.fade) + 128.0 * shift.fade;
                            v[k] = base + jitter[k] as f32;
                        }
                    } else {
                        *v = [grey; 3];
                    }
                }
            }
            if shift.blur > 0 {
                px = box_blur(&px, s, shift.blur as i32);
            }
            for _ in 0..shift.stripes {
                let row = rng.random_range(0..s);
                let h = (s / 8).max(1);
                for y in row..(row + h).min(s) {
                    for x in 0..s {
                        px[(y * s + x) as usize] = [128.0; 3];
                    }
                }
            }
            let mut img = image::RgbImage::new(size, size);
            for (x, y, p) in img.enumerate_pixels_mut() {
                let v = px[(y as i32 * s + x as i32) as usize];
                for k in 0..3 {
                    let mut t = 128.0 + (v[k] - 128.0) * shift.contrast + shift.cast[k] as f32;
                    if shift.gamma != 1.0 {
                        t = 255.0 * (t.clamp(0.0, 255.0) / 255.0).powf(shift.gamma);
                    }
                    let t = t as i32 + rng.random_range(-shift.noise..=shift.noise);
                    p[k] = t.clamp(0, 255) as u8;
                }
            }
            img.save(class_dir.join(format!("{i:03}.png")))
                .map_err(std::io::Error::other)?;
        }
    }
    Ok(names)
}

fn box_blur(px: &[[f32; 3]], s: i32, r: i32) -> Vec<[f32; 3]> {
    let mut out = vec![[0f32; 3]; px.len()];
    for y in 0..s {
        for x in 0..s {
            let (mut acc, mut n) = ([0f32; 3], 0f32);
            for yy in (y - r).max(0)..=(y + r).min(s - 1) {
                for xx in (x - r).max(0)..=(x + r).min(s - 1) {
                    let v = px[(yy * s + xx) as usize];
                    for k in 0..3 {
                        acc[k] += v[k];
                    }
                    n += 1.0;
                }
            }
            out[(y * s + x) as usize] = [acc[0] / n, acc[1] / n, acc[2] / n];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_images_and_shapes_differ() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        let b = t.path().join("b");
        for d in [&a, &b] {
            write_task(d, ClassKind::Shape, 3, 2, 24, 5, &Shift::CLEAN).unwrap();
        }
        let read = |p: &Path| std::fs::read(p).unwrap();
        assert_eq!(
            read(&a.join("triangle/001.png")),
            read(&b.join("triangle/001.png"))
        );
        // Masks of different shapes differ at the same size.
        let mask = |shape| -> Vec<bool> {
            (-8..=8)
                .flat_map(|y| (-8..=8).map(move |x| (x, y)))
                .map(|(x, y)| inside(shape, x, y, 8))
                .collect()
        };
        let masks: Vec<Vec<bool>> = (0..6).map(mask).collect();
        for i in 0..6 {
            assert!(masks[i].iter().any(|&m| m), "shape {i} draws nothing");
            for j in i + 1..6 {
                assert_ne!(masks[i], masks[j], "shapes {i} and {j} draw the same mask");
            }
        }
    }
}
