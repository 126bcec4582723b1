//! Seeded training augmentations with torchvision semantics: the Phase I/II augmentation of
//! METHOD.md (random resized crop, scale 0.5-1, + horizontal flip) and the MoCo v2 views of
//! CoFT+ (METHOD.md, "Momentum contrastive learning during Phase II").
//!
//! # Semantics
//!
//! - [`RandomResizedCrop`]: torchvision's `RandomResizedCrop.get_params` step for step (ten
//!   attempts with a uniform area fraction and a log-uniform aspect ratio, Python's
//!   round-half-to-even, then the centre-crop fallback), and the chosen box resampled to
//!   `size`x`size` with Pillow's bicubic filter ([`preprocess::resize_bicubic_box`], no
//!   intermediate crop copy). One difference from torchvision's crop-then-resize: at the box
//!   border the filter also reads the source pixels just outside the box (Pillow's `box=`
//!   semantics), where torchvision's copy stops at the crop; only the outer ~2 pixels (times
//!   the downscale factor) differ, and the box itself is the same.
//! - The colour operations follow torchvision's *tensor* functional ops
//!   (`torchvision/transforms/_functional_tensor.py`) on `f32` values in `[0, 1]`: blends as
//!   `ratio * a + (1 - ratio) * b` clamped to `[0, 1]`, greyscale as `0.2989 R + 0.587 G +
//!   0.114 B` (ITU-R 601-2 luma), contrast towards the mean grey of the whole image, hue as
//!   a rotation in HSV with torchvision's `_rgb2hsv` / `_hsv2rgb`. `tests/augment.rs`
//!   compares them with torchvision on a committed fixture (`tools/ref_augment.py`).
//! - [`ColorJitter`]: a random permutation of the four adjustments, each factor uniform in
//!   `[max(0, 1 - x), 1 + x]` (hue in `[-h, h]`); an adjustment with `x = 0` is left out, as
//!   torchvision does. `p` wraps it in `RandomApply`.
//! - [`GaussianBlur`]: torchvision's kernel (`linspace(-(k-1)/2, (k-1)/2)`, `exp(-x^2 /
//!   2 sigma^2)`, normalised) applied separably with reflect padding of `k / 2` (reflection
//!   repeats for images smaller than the padding, where torchvision would refuse).
//!
//! # Determinism
//!
//! The randomness for one image comes only from `(seed, epoch, index, view)`
//! ([`sample_rng`]): a ChaCha8 stream keyed by the four numbers. Batches decoded in parallel
//! are therefore identical run to run whatever the thread scheduling, and a resumed run sees
//! the augmentations it would have seen without the interruption. `view` tells apart the two
//! MoCo views of one image.
//!
//! # Cost
//!
//! This runs for every training image every epoch, so: geometric operations stay on 8-bit
//! pixels; a flip is only remembered and done while writing the output; the image becomes
//! `f32` only when a colour operation actually applies, and then in the caller's output
//! buffer itself (CHW, so the last step normalises in place). Without colour operations the
//! output is written through a lookup table, with the same arithmetic as
//! [`preprocess::to_tensor_chw`]. Nothing is allocated per pixel; the blur borrows a
//! per-thread scratch buffer.

use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::Arc;

use image::RgbImage;
use rand::seq::SliceRandom;
use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::clip::preprocess::{self, CLIP_MEAN, CLIP_STD};
use crate::data::loader::Transform;

/// A pipeline that cannot run as given, with what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid augmentation pipeline: {0}")]
pub struct AugmentError(pub String);

/// Crop a random box (area fraction in `scale`, aspect ratio `w / h` in `ratio`) and resize it
/// to `size`x`size` (torchvision `RandomResizedCrop(size, scale, ratio, BICUBIC)`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RandomResizedCrop {
    pub size: u32,
    pub scale: (f32, f32),
    pub ratio: (f32, f32),
}

/// A crop box in source pixels: rows `top..top + height`, columns `left..left + width`
/// (torchvision's `(i, j, h, w)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropParams {
    pub top: u32,
    pub left: u32,
    pub height: u32,
    pub width: u32,
}

/// Mirror left-right with probability `p` (torchvision `RandomHorizontalFlip`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HorizontalFlip {
    pub p: f32,
}

/// torchvision `RandomApply([ColorJitter(brightness, contrast, saturation, hue)], p)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ColorJitter {
    pub brightness: f32,
    pub contrast: f32,
    pub saturation: f32,
    /// At most 0.5 (a half turn of the hue circle).
    pub hue: f32,
    pub p: f32,
}

/// Three-channel greyscale with probability `p` (torchvision `RandomGrayscale`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RandomGrayscale {
    pub p: f32,
}

/// torchvision `RandomApply([GaussianBlur(kernel_size, sigma)], p)`: sigma uniform in the range.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GaussianBlur {
    /// Odd, e.g. 23 at 224 px as MoCo v2 (about a tenth of the side).
    pub kernel_size: u32,
    pub sigma: (f32, f32),
    pub p: f32,
}

/// One step of a [`Pipeline`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    RandomResizedCrop(RandomResizedCrop),
    HorizontalFlip(HorizontalFlip),
    ColorJitter(ColorJitter),
    RandomGrayscale(RandomGrayscale),
    GaussianBlur(GaussianBlur),
}

impl From<RandomResizedCrop> for Op {
    fn from(o: RandomResizedCrop) -> Self {
        Op::RandomResizedCrop(o)
    }
}
impl From<HorizontalFlip> for Op {
    fn from(o: HorizontalFlip) -> Self {
        Op::HorizontalFlip(o)
    }
}
impl From<ColorJitter> for Op {
    fn from(o: ColorJitter) -> Self {
        Op::ColorJitter(o)
    }
}
impl From<RandomGrayscale> for Op {
    fn from(o: RandomGrayscale) -> Self {
        Op::RandomGrayscale(o)
    }
}
impl From<GaussianBlur> for Op {
    fn from(o: GaussianBlur) -> Self {
        Op::GaussianBlur(o)
    }
}

/// Operations applied in order to an RGB image, then `ToTensor` + `Normalize(mean, std)`
/// into a `3 x size x size` CHW buffer.
///
/// Every [`RandomResizedCrop`] must produce `size`x`size` and come before the colour
/// operations. Without one, the image is first resized and centre cropped to `size` as for
/// inference ([`preprocess::resize_and_center_crop`]).
///
/// Deserialising validates ([`Pipeline::validate`]), so a saved configuration that was edited
/// into an invalid order is refused when read, not when the first image runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "UncheckedPipeline")]
pub struct Pipeline {
    pub size: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub ops: Vec<Op>,
}

/// The serialised form of [`Pipeline`], before validation.
#[derive(Deserialize)]
struct UncheckedPipeline {
    size: u32,
    mean: [f32; 3],
    std: [f32; 3],
    ops: Vec<Op>,
}

impl TryFrom<UncheckedPipeline> for Pipeline {
    type Error = AugmentError;

    fn try_from(u: UncheckedPipeline) -> Result<Self, Self::Error> {
        let p = Pipeline {
            size: u.size,
            mean: u.mean,
            std: u.std,
            ops: u.ops,
        };
        p.validate()?;
        Ok(p)
    }
}

/// METHOD.md Phase I/II training augmentation: `RandomResizedCrop(size, scale=(0.5, 1))`
/// + `RandomHorizontalFlip(0.5)`, CLIP normalisation.
pub fn train_default(size: u32) -> Pipeline {
    crop_flip(size, 0.5).expect("the preset is valid")
}

/// `RandomResizedCrop(size, scale=(min_scale, 1), ratio=(3/4, 4/3))` + `RandomHorizontalFlip(0.5)`,
/// CLIP normalisation: [`train_default`] with another lower bound on the crop area.
pub fn crop_flip(size: u32, min_scale: f32) -> Result<Pipeline, AugmentError> {
    Pipeline::new(
        size,
        vec![
            RandomResizedCrop {
                size,
                scale: (min_scale, 1.0),
                ratio: (3.0 / 4.0, 4.0 / 3.0),
            }
            .into(),
            HorizontalFlip { p: 0.5 }.into(),
        ],
    )
}

/// MoCo v2's augmentation (METHOD.md, CoFT+): `RandomResizedCrop(size, scale=(0.2, 1))`,
/// `ColorJitter(0.4, 0.4, 0.4, 0.1)` with p 0.8, greyscale p 0.2, Gaussian blur (sigma
/// 0.1-2, kernel the odd number nearest a tenth of `size`: 23 at 224) p 0.5, flip; CLIP
/// normalisation.
pub fn moco_v2(size: u32) -> Pipeline {
    moco_v2_crop(size, 0.2).expect("the preset is valid")
}

/// [`moco_v2`] with another lower bound on the crop area (`phase2.moco.crop_scale_min`):
/// CoFT+'s Phase II trains its cross-entropy on this view, and a 20% crop of a 32-pixel image
/// is a 14-pixel patch (docs/method.md has the table).
pub fn moco_v2_crop(size: u32, min_scale: f32) -> Result<Pipeline, AugmentError> {
    let k = (size as f32 * 0.1).round().max(1.0) as u32;
    let kernel_size = if k.is_multiple_of(2) { k + 1 } else { k };
    Pipeline::new(
        size,
        vec![
            RandomResizedCrop {
                size,
                scale: (min_scale, 1.0),
                ratio: (3.0 / 4.0, 4.0 / 3.0),
            }
            .into(),
            ColorJitter {
                brightness: 0.4,
                contrast: 0.4,
                saturation: 0.4,
                hue: 0.1,
                p: 0.8,
            }
            .into(),
            RandomGrayscale { p: 0.2 }.into(),
            GaussianBlur {
                kernel_size,
                sigma: (0.1, 2.0),
                p: 0.5,
            }
            .into(),
            HorizontalFlip { p: 0.5 }.into(),
        ],
    )
}

/// The random stream of image `index` in `epoch`, `view`: ChaCha8 keyed by the four numbers
/// (distinct tuples give independent streams; nothing else enters).
pub fn sample_rng(seed: u64, epoch: u64, index: u64, view: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    for (chunk, v) in key.chunks_exact_mut(8).zip([seed, epoch, index, view]) {
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    ChaCha8Rng::from_seed(key)
}

/// The loader transform of `pipeline` for one epoch and view: the sample index the loader
/// passes (the position in its path list) selects the random stream ([`sample_rng`]).
pub fn transform(pipeline: Pipeline, seed: u64, epoch: u64, view: u64) -> Arc<Transform> {
    Arc::new(move |index: usize, img: &RgbImage, out: &mut [f32]| {
        let mut rng = sample_rng(seed, epoch, index as u64, view);
        pipeline.apply(img, &mut rng, out);
    })
}

/// `U[0, 1) < p`, as torchvision's `torch.rand(1) < p` (p = 0 never, p = 1 always).
fn chance(rng: &mut impl Rng, p: f32) -> bool {
    rng.random::<f64>() < f64::from(p)
}

/// `torch.empty(1).uniform_(a, b)`: `a + (b - a) U`, `a` when the range is empty.
fn uniform(rng: &mut impl Rng, a: f64, b: f64) -> f64 {
    a + (b - a) * rng.random::<f64>()
}

fn check_p(what: &str, p: f32) -> Result<(), AugmentError> {
    if (0.0..=1.0).contains(&p) {
        Ok(())
    } else {
        Err(AugmentError(format!(
            "{what}: probability {p} is not in [0, 1]"
        )))
    }
}

impl RandomResizedCrop {
    fn validate(&self) -> Result<(), AugmentError> {
        let (s0, s1) = self.scale;
        let (r0, r1) = self.ratio;
        if self.size == 0 {
            return Err(AugmentError("random resized crop: size 0".into()));
        }
        if !(s0 > 0.0 && s0 <= s1 && s1.is_finite()) {
            return Err(AugmentError(format!(
                "random resized crop: scale ({s0}, {s1}) must satisfy 0 < min <= max"
            )));
        }
        if !(r0 > 0.0 && r0 <= r1 && r1.is_finite()) {
            return Err(AugmentError(format!(
                "random resized crop: ratio ({r0}, {r1}) must satisfy 0 < min <= max"
            )));
        }
        Ok(())
    }

    /// torchvision's `RandomResizedCrop.get_params` for a `width`x`height` image.
    pub fn get_params(&self, width: u32, height: u32, rng: &mut impl Rng) -> CropParams {
        let area = f64::from(width) * f64::from(height);
        let (s0, s1) = (f64::from(self.scale.0), f64::from(self.scale.1));
        let (r0, r1) = (f64::from(self.ratio.0), f64::from(self.ratio.1));
        let (lr0, lr1) = (r0.ln(), r1.ln());
        for _ in 0..10 {
            let target_area = area * uniform(rng, s0, s1);
            let aspect = uniform(rng, lr0, lr1).exp();
            // Python's round() rounds half to even.
            let w = (target_area * aspect).sqrt().round_ties_even();
            let h = (target_area / aspect).sqrt().round_ties_even();
            if w > 0.0 && w <= f64::from(width) && h > 0.0 && h <= f64::from(height) {
                let (w, h) = (w as u32, h as u32);
                let top = rng.random_range(0..=height - h);
                let left = rng.random_range(0..=width - w);
                return CropParams {
                    top,
                    left,
                    height: h,
                    width: w,
                };
            }
        }
        // Fallback: the largest centred box with the aspect ratio clamped into `ratio`.
        let in_ratio = f64::from(width) / f64::from(height);
        let (rmin, rmax) = (r0.min(r1), r0.max(r1));
        let (w, h) = if in_ratio < rmin {
            let h = (f64::from(width) / rmin).round_ties_even() as u32;
            (width, h.clamp(1, height))
        } else if in_ratio > rmax {
            let w = (f64::from(height) * rmax).round_ties_even() as u32;
            (w.clamp(1, width), height)
        } else {
            (width, height)
        };
        CropParams {
            top: (height - h) / 2,
            left: (width - w) / 2,
            height: h,
            width: w,
        }
    }
}

/// The four factors of one [`ColorJitter`] draw and the order they apply in (torchvision's
/// `ColorJitter.get_params`); `None` for an adjustment switched off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JitterParams {
    /// A permutation of 0 (brightness), 1 (contrast), 2 (saturation), 3 (hue).
    pub order: [u8; 4],
    pub brightness: Option<f64>,
    pub contrast: Option<f64>,
    pub saturation: Option<f64>,
    pub hue: Option<f64>,
}

impl ColorJitter {
    fn validate(&self) -> Result<(), AugmentError> {
        check_p("colour jitter", self.p)?;
        for (name, v) in [
            ("brightness", self.brightness),
            ("contrast", self.contrast),
            ("saturation", self.saturation),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(AugmentError(format!(
                    "colour jitter: {name} {v} must be >= 0"
                )));
            }
        }
        if !(0.0..=0.5).contains(&self.hue) {
            return Err(AugmentError(format!(
                "colour jitter: hue {} must be in [0, 0.5]",
                self.hue
            )));
        }
        Ok(())
    }

    /// Draws the order and the factors (not the `p` coin).
    pub fn get_params(&self, rng: &mut impl Rng) -> JitterParams {
        let mut order = [0u8, 1, 2, 3];
        order.shuffle(rng);
        let mut factor = |x: f32| {
            (x > 0.0).then(|| {
                let x = f64::from(x);
                uniform(rng, (1.0 - x).max(0.0), 1.0 + x)
            })
        };
        let brightness = factor(self.brightness);
        let contrast = factor(self.contrast);
        let saturation = factor(self.saturation);
        let hue = (self.hue > 0.0).then(|| {
            let h = f64::from(self.hue);
            uniform(rng, -h, h)
        });
        JitterParams {
            order,
            brightness,
            contrast,
            saturation,
            hue,
        }
    }
}

impl JitterParams {
    /// Applies the adjustments in order to CHW `[0, 1]` planes.
    pub fn apply(&self, img: &mut [f32]) {
        for op in self.order {
            match op {
                0 => {
                    if let Some(f) = self.brightness {
                        adjust_brightness(img, f);
                    }
                }
                1 => {
                    if let Some(f) = self.contrast {
                        adjust_contrast(img, f);
                    }
                }
                2 => {
                    if let Some(f) = self.saturation {
                        adjust_saturation(img, f);
                    }
                }
                _ => {
                    if let Some(f) = self.hue {
                        adjust_hue(img, f);
                    }
                }
            }
        }
    }
}

impl GaussianBlur {
    fn validate(&self) -> Result<(), AugmentError> {
        check_p("gaussian blur", self.p)?;
        if self.kernel_size == 0 || self.kernel_size.is_multiple_of(2) {
            return Err(AugmentError(format!(
                "gaussian blur: kernel size {} must be odd and positive",
                self.kernel_size
            )));
        }
        let (a, b) = self.sigma;
        if !(a > 0.0 && a <= b && b.is_finite()) {
            return Err(AugmentError(format!(
                "gaussian blur: sigma ({a}, {b}) must satisfy 0 < min <= max"
            )));
        }
        Ok(())
    }
}

impl Pipeline {
    /// A pipeline with CLIP's normalisation, checked (see the type doc for the rules).
    pub fn new(size: u32, ops: Vec<Op>) -> Result<Self, AugmentError> {
        let p = Pipeline {
            size,
            mean: CLIP_MEAN,
            std: CLIP_STD,
            ops,
        };
        p.validate()?;
        Ok(p)
    }

    /// Checks the parameters and the order of the operations.
    pub fn validate(&self) -> Result<(), AugmentError> {
        if self.size == 0 {
            return Err(AugmentError("output size 0".into()));
        }
        if !self.std.iter().all(|s| *s != 0.0 && s.is_finite()) {
            return Err(AugmentError(format!(
                "std {:?} must be finite and non-zero",
                self.std
            )));
        }
        let mut colour_seen = false;
        for op in &self.ops {
            match op {
                Op::RandomResizedCrop(c) => {
                    c.validate()?;
                    if c.size != self.size {
                        return Err(AugmentError(format!(
                            "random resized crop to {} in a pipeline of size {}",
                            c.size, self.size
                        )));
                    }
                    if colour_seen {
                        return Err(AugmentError(
                            "random resized crop after a colour operation; crop first".into(),
                        ));
                    }
                }
                Op::HorizontalFlip(f) => check_p("horizontal flip", f.p)?,
                Op::ColorJitter(j) => {
                    j.validate()?;
                    colour_seen = true;
                }
                Op::RandomGrayscale(g) => {
                    check_p("random greyscale", g.p)?;
                    colour_seen = true;
                }
                Op::GaussianBlur(b) => {
                    b.validate()?;
                    colour_seen = true;
                }
            }
        }
        Ok(())
    }

    /// Floats [`Pipeline::apply`] writes: `3 * size^2`.
    pub fn tensor_len(&self) -> usize {
        3 * self.size as usize * self.size as usize
    }

    /// Augments `img` with the randomness of `rng` and writes the normalised CHW result into
    /// `out` ([`Pipeline::tensor_len`] floats). The same `rng` state gives the same bytes.
    ///
    /// # Panics
    /// If `out` has the wrong length, the image is empty, or the pipeline is invalid (built
    /// field by field without [`Pipeline::validate`]).
    pub fn apply(&self, img: &RgbImage, rng: &mut impl Rng, out: &mut [f32]) {
        assert_eq!(
            out.len(),
            self.tensor_len(),
            "augment: output buffer has {} floats, {}x{} needs {}",
            out.len(),
            self.size,
            self.size,
            self.tensor_len()
        );
        let size = self.size as usize;
        let mut cur: Cow<'_, RgbImage> = Cow::Borrowed(img);
        // A flip not yet done to `cur` (done while writing it out).
        let mut flip = false;
        // Whether `out` holds the image as [0, 1] planes (after the first colour operation).
        let mut float = false;
        for op in &self.ops {
            match op {
                Op::RandomResizedCrop(c) => {
                    assert!(
                        !float,
                        "augment: random resized crop after a colour operation"
                    );
                    if flip {
                        flip_image(cur.to_mut());
                        flip = false;
                    }
                    let p = c.get_params(cur.width(), cur.height(), rng);
                    let bx = [
                        p.left as f32,
                        p.top as f32,
                        (p.left + p.width) as f32,
                        (p.top + p.height) as f32,
                    ];
                    cur = Cow::Owned(preprocess::resize_bicubic_box(&cur, bx, c.size, c.size));
                }
                Op::HorizontalFlip(f) => {
                    if chance(rng, f.p) {
                        if float {
                            flip_planes(out, size);
                        } else {
                            flip = !flip;
                        }
                    }
                }
                Op::ColorJitter(j) => {
                    if chance(rng, j.p) {
                        let params = j.get_params(rng);
                        self.to_float(&mut cur, &mut flip, &mut float, out);
                        params.apply(out);
                    }
                }
                Op::RandomGrayscale(g) => {
                    if chance(rng, g.p) {
                        self.to_float(&mut cur, &mut flip, &mut float, out);
                        grayscale(out);
                    }
                }
                Op::GaussianBlur(b) => {
                    if chance(rng, b.p) {
                        let sigma = uniform(rng, f64::from(b.sigma.0), f64::from(b.sigma.1));
                        self.to_float(&mut cur, &mut flip, &mut float, out);
                        gaussian_blur(out, size, size, b.kernel_size as usize, sigma);
                    }
                }
            }
        }
        if float {
            let plane = size * size;
            for (c, ch) in out.chunks_exact_mut(plane).enumerate() {
                let (m, s) = (self.mean[c], self.std[c]);
                for v in ch {
                    *v = (*v - m) / s;
                }
            }
        } else {
            self.fit(&mut cur, &mut flip);
            let lut = self.table(|x, c| (x - self.mean[c]) / self.std[c]);
            write_planes(&cur, flip, &lut, out);
        }
    }

    /// `(v * (1/255)) as f32` through `f`, per channel: the arithmetic of
    /// [`preprocess::to_tensor_chw`].
    fn table(&self, f: impl Fn(f32, usize) -> f32) -> [[f32; 256]; 3] {
        let mut lut = [[0f32; 256]; 3];
        for (c, t) in lut.iter_mut().enumerate() {
            for (v, x) in t.iter_mut().enumerate() {
                *x = f((v as f64 * (1.0 / 255.0)) as f32, c);
            }
        }
        lut
    }

    /// Brings `cur` to `size`x`size` (inference resize + centre crop) when no crop did.
    fn fit(&self, cur: &mut Cow<'_, RgbImage>, flip: &mut bool) {
        if cur.dimensions() != (self.size, self.size) {
            if *flip {
                flip_image(cur.to_mut());
                *flip = false;
            }
            *cur = Cow::Owned(preprocess::resize_and_center_crop(cur, self.size));
        }
    }

    /// Switches to the `f32` representation: `out` gets the `[0, 1]` planes of `cur`.
    fn to_float(
        &self,
        cur: &mut Cow<'_, RgbImage>,
        flip: &mut bool,
        float: &mut bool,
        out: &mut [f32],
    ) {
        if *float {
            return;
        }
        self.fit(cur, flip);
        let lut = self.table(|x, _| x);
        write_planes(cur, *flip, &lut, out);
        *flip = false;
        *float = true;
    }
}

/// Writes a square RGB image as CHW planes through per-channel tables, mirrored if `flip`.
fn write_planes(img: &RgbImage, flip: bool, lut: &[[f32; 256]; 3], out: &mut [f32]) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let plane = w * h;
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (y, row) in img.as_raw().chunks_exact(w * 3).enumerate() {
        let o = y * w;
        let (r, g, b) = (&mut r[o..o + w], &mut g[o..o + w], &mut b[o..o + w]);
        for (x, px) in row.chunks_exact(3).enumerate() {
            let xo = if flip { w - 1 - x } else { x };
            r[xo] = lut[0][px[0] as usize];
            g[xo] = lut[1][px[1] as usize];
            b[xo] = lut[2][px[2] as usize];
        }
    }
}

fn flip_image(img: &mut RgbImage) {
    image::imageops::flip_horizontal_in_place(img);
}

/// Mirrors every row of CHW planes of width `w`.
fn flip_planes(img: &mut [f32], w: usize) {
    for row in img.chunks_exact_mut(w) {
        row.reverse();
    }
}

// ---------------------------------------------------------------------------------------------
// torchvision's tensor colour operations on CHW `f32` planes in [0, 1] (`img.len() = 3 * plane`).

fn planes(img: &mut [f32]) -> (&mut [f32], &mut [f32], &mut [f32]) {
    assert!(
        img.len().is_multiple_of(3),
        "colour op: {} floats is not 3 planes",
        img.len()
    );
    let plane = img.len() / 3;
    let (r, rest) = img.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    (r, g, b)
}

/// torchvision's `rgb_to_grayscale` for float images: `0.2989 R + 0.587 G + 0.114 B` in `f32`.
#[inline]
pub fn luma(r: f32, g: f32, b: f32) -> f32 {
    0.2989f32 * r + 0.587f32 * g + 0.114f32 * b
}

/// `_blend`: `ratio * a + (1 - ratio) * b` clamped to [0, 1], the scalars rounded to `f32`
/// as PyTorch does for a Python float times a float tensor.
#[inline]
fn blend(a: f32, b: f32, ratio: f32, one_minus: f32) -> f32 {
    (ratio * a + one_minus * b).clamp(0.0, 1.0)
}

/// torchvision `adjust_brightness`: blend with black.
pub fn adjust_brightness(img: &mut [f32], factor: f64) {
    let (k, k1) = (factor as f32, (1.0 - factor) as f32);
    for v in img.iter_mut() {
        *v = blend(*v, 0.0, k, k1);
    }
}

/// torchvision `adjust_contrast`: blend with the mean grey of the whole image.
pub fn adjust_contrast(img: &mut [f32], factor: f64) {
    let (k, k1) = (factor as f32, (1.0 - factor) as f32);
    let (r, g, b) = planes(img);
    let n = r.len().max(1);
    let sum: f64 = r
        .iter()
        .zip(g.iter())
        .zip(b.iter())
        .map(|((&r, &g), &b)| f64::from(luma(r, g, b)))
        .sum();
    let mean = (sum / n as f64) as f32;
    for ch in [r, g, b] {
        for v in ch.iter_mut() {
            *v = blend(*v, mean, k, k1);
        }
    }
}

/// torchvision `adjust_saturation`: blend each pixel with its grey.
pub fn adjust_saturation(img: &mut [f32], factor: f64) {
    let (k, k1) = (factor as f32, (1.0 - factor) as f32);
    let (r, g, b) = planes(img);
    for ((r, g), b) in r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut()) {
        let l = luma(*r, *g, *b);
        *r = blend(*r, l, k, k1);
        *g = blend(*g, l, k, k1);
        *b = blend(*b, l, k, k1);
    }
}

/// `if c { a } else { b }`, for branch-free code that vectorises.
#[inline(always)]
fn sel(c: bool, a: f32, b: f32) -> f32 {
    if c {
        a
    } else {
        b
    }
}

/// torchvision `adjust_hue`: rotate the hue by `factor` turns (in [-0.5, 0.5]) in HSV, with
/// `_rgb2hsv` / `_hsv2rgb`'s arithmetic.
///
/// Written with selects only (no branches, integer conversions or library calls) so that it
/// vectorises; each step gives the same bits as torch's: `fmod(x, 1)` of `x` in `[5/6, 2)`
/// is `x` or the exact `x - 1`; torch's `remainder(x, 1)` of `x` in `[-0.5, 1.5)` adds or
/// subtracts 1 the same way; `floor(h * 6)` of `h * 6` in `[0, 6]` counts the integers
/// below it.
pub fn adjust_hue(img: &mut [f32], factor: f64) {
    let shift = factor as f32;
    let (r, g, b) = planes(img);
    let one = |c: bool| sel(c, 1.0, 0.0);
    for ((r, g), b) in r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut()) {
        let (rv, gv, bv) = (*r, *g, *b);
        // _rgb2hsv
        let maxc = rv.max(gv).max(bv);
        let minc = rv.min(gv).min(bv);
        let eqc = maxc == minc;
        let cr = maxc - minc;
        let s = cr / sel(eqc, 1.0, maxc);
        let div = sel(eqc, 1.0, cr);
        let rc = (maxc - rv) / div;
        let gc = (maxc - gv) / div;
        let bc = (maxc - bv) / div;
        let h = sel(
            maxc == rv,
            bc - gc,
            sel(maxc == gv, 2.0 + rc - bc, 4.0 + gc - rc),
        );
        // torch.fmod(h / 6 + 1, 1)
        let h = h / 6.0 + 1.0;
        let h = sel(h >= 1.0, h - 1.0, h);
        let v = maxc;
        // (h + shift) % 1.0
        let h = h + shift;
        let h = sel(h >= 1.0, h - 1.0, sel(h < 0.0, h + 1.0, h));
        // _hsv2rgb
        let h6 = h * 6.0;
        let fl = one(h6 >= 1.0)
            + one(h6 >= 2.0)
            + one(h6 >= 3.0)
            + one(h6 >= 4.0)
            + one(h6 >= 5.0)
            + one(h6 >= 6.0);
        let f = h6 - fl;
        let p = (v * (1.0 - s)).clamp(0.0, 1.0);
        let q = (v * (1.0 - s * f)).clamp(0.0, 1.0);
        let t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0);
        // Sector i = floor(h * 6) % 6; `|` rather than `||` keeps it branch-free.
        let i0 = (fl == 0.0) | (fl == 6.0);
        let (i1, i2, i3, i4, i5) = (fl == 1.0, fl == 2.0, fl == 3.0, fl == 4.0, fl == 5.0);
        *r = sel(i0 | i5, v, sel(i1, q, sel(i4, t, p)));
        *g = sel(i0, t, sel(i1 | i2, v, sel(i3, q, p)));
        *b = sel(i0 | i1, p, sel(i2, t, sel(i5, q, v)));
    }
}

/// torchvision `rgb_to_grayscale(img, num_output_channels=3)` for float images.
pub fn grayscale(img: &mut [f32]) {
    let (r, g, b) = planes(img);
    for ((r, g), b) in r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut()) {
        let l = luma(*r, *g, *b);
        *r = l;
        *g = l;
        *b = l;
    }
}

/// torchvision's `_get_gaussian_kernel1d` in `f32`.
pub fn gaussian_kernel1d(kernel_size: usize, sigma: f64) -> Vec<f32> {
    let half = (kernel_size as f32 - 1.0) * 0.5;
    let sigma = sigma as f32;
    let pdf: Vec<f32> = (0..kernel_size)
        .map(|i| {
            let x = (i as f32 - half) / sigma;
            (-0.5 * (x * x)).exp()
        })
        .collect();
    let sum: f32 = pdf.iter().sum();
    pdf.into_iter().map(|p| p / sum).collect()
}

/// Index `i` reflected into `0..n` without repeating the edge (`torch.nn.functional.pad`
/// "reflect"), bouncing again for paddings wider than the image.
#[inline]
fn reflect(i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let m = i.rem_euclid(period);
    if m >= n as isize {
        (period - m) as usize
    } else {
        m as usize
    }
}

thread_local! {
    /// Per-thread scratch for the blur: one plane plus one padded row.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// torchvision `gaussian_blur(img, [k, k], [sigma, sigma])` on CHW planes of `width` x
/// `height` (any number of planes): reflect padding of `k / 2`, done as two 1-D passes that
/// add the symmetric taps in pairs. Taps below 1e-9 (a thousandth of an `f32` ulp at 1, so
/// they cannot change a sum of values in `[0, 1]` by more than rounding) are left out: at
/// MoCo's kernel 23 that is most of them for small sigmas.
///
/// # Panics
/// If the buffer is not a whole number of `width * height` planes.
pub fn gaussian_blur(img: &mut [f32], width: usize, height: usize, kernel_size: usize, sigma: f64) {
    let plane = width * height;
    assert!(
        plane > 0 && img.len().is_multiple_of(plane),
        "gaussian_blur: {} floats is not a whole number of {width}x{height} planes",
        img.len()
    );
    assert!(
        kernel_size % 2 == 1,
        "gaussian_blur: kernel size must be odd"
    );
    let k = gaussian_kernel1d(kernel_size, sigma);
    let pad = kernel_size / 2;
    let k0 = k[pad];
    let mut reach = pad;
    while reach > 0 && k[pad - reach] < 1e-9 {
        reach -= 1;
    }
    // (weight, offset) pairs for offsets 1..=reach on both sides.
    let pairs: Vec<(f32, usize)> = (1..=reach).map(|d| (k[pad - d], d)).collect();
    let xs: Vec<usize> = (0..width + 2 * pad)
        .map(|i| reflect(i as isize - pad as isize, width))
        .collect();
    let ys: Vec<usize> = (0..height + 2 * pad)
        .map(|i| reflect(i as isize - pad as isize, height))
        .collect();
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        s.resize(plane + width + 2 * pad, 0.0);
        let (tmp, line) = s.split_at_mut(plane);
        for ch in img.chunks_exact_mut(plane) {
            // Horizontal pass: ch -> tmp, through a reflect-padded copy of each row.
            for (row, o) in ch.chunks_exact(width).zip(tmp.chunks_exact_mut(width)) {
                for (p, &i) in line.iter_mut().zip(&xs) {
                    *p = row[i];
                }
                scaled(o, &line[pad..pad + width], k0);
                for &(kd, d) in &pairs {
                    let left = &line[pad - d..pad - d + width];
                    let right = &line[pad + d..pad + d + width];
                    add_pair(o, left, right, kd);
                }
            }
            // Vertical pass: tmp -> ch, whole rows at a time.
            let row = |y: usize| &tmp[y * width..(y + 1) * width];
            for (y, o) in ch.chunks_exact_mut(width).enumerate() {
                scaled(o, row(y), k0);
                for &(kd, d) in &pairs {
                    add_pair(o, row(ys[y + pad - d]), row(ys[y + pad + d]), kd);
                }
            }
        }
    });
}

/// `o = k * a` (a function of its own so that the slices are known not to alias).
#[inline(never)]
fn scaled(o: &mut [f32], a: &[f32], k: f32) {
    for (ov, &av) in o.iter_mut().zip(a) {
        *ov = k * av;
    }
}

/// `o += k * (a + b)`: two symmetric taps at once.
#[inline(never)]
fn add_pair(o: &mut [f32], a: &[f32], b: &[f32], k: f32) {
    for ((ov, &av), &bv) in o.iter_mut().zip(a).zip(b) {
        *ov += k * (av + bv);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_matches_torch_padding() {
        // torch reflect pad of [0, 1, 2, 3, 4] by 3: 3 2 1 | 0 1 2 3 4 | 3 2 1
        let got: Vec<usize> = (-3..8).map(|i| reflect(i, 5)).collect();
        assert_eq!(got, [3, 2, 1, 0, 1, 2, 3, 4, 3, 2, 1]);
        assert_eq!(reflect(-7, 2), 1);
        assert_eq!(reflect(5, 1), 0);
    }

    #[test]
    fn kernel_is_normalised_and_symmetric() {
        let k = gaussian_kernel1d(23, 1.5);
        assert!((k.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        for i in 0..23 {
            assert_eq!(k[i], k[22 - i]);
        }
    }
}
