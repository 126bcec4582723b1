//! CLIP image preprocessing, equal to Hugging Face's PIL-based `CLIPImageProcessor`
//! (`CLIPImageProcessorPil` in transformers 5) with `size={"shortest_edge": S}` and
//! `crop_size={"height": S, "width": S}`:
//!
//! 1. resize so the shorter side is `S` (the longer side is `int(S * long / short)`, truncated),
//!    with Pillow's BICUBIC filter ([`resize_bicubic`] is a port of Pillow's
//!    `libImaging/Resample.c` and gives the same bytes);
//! 2. center crop `S`x`S` (offset `floor((side - S) / 2)`, zero padding where the image is smaller);
//! 3. rescale by `1/255` and normalise with the OpenAI CLIP mean and std, with the processor's
//!    exact float arithmetic, into a CHW `f32` buffer.
//!
//! [`preprocess`] fuses the three steps: it resamples only the output pixels that survive the
//! crop, which gives the same bytes as resizing and then cropping.
//!
//! The resampler follows Pillow 13 exactly: antialiased bicubic (`a = -0.5`, support scaled by
//! the downscale factor), coefficients normalised and turned into 22-bit fixed point, rounding
//! and clipping to `u8` after each pass, and the pass order of Pillow 13 (horizontal first,
//! unless the height shrinks by more than twice as many pixels as the width). Only the arithmetic
//! layout differs: the horizontal pass works on blocks of rows transposed so that it vectorises,
//! and both passes have an AVX2 build chosen at run time. Integer sums do not depend on their
//! order, so every path gives the same bytes.
//!
//! Input is an RGB image; alpha, greyscale and EXIF handling belong to the decoder
//! (`crate::data::decode`).

use std::ops::Range;

use image::RgbImage;

/// OpenAI CLIP normalisation mean (as the Python floats, rounded to `f32` like numpy does).
pub const CLIP_MEAN: [f32; 3] = [
    0.48145466_f64 as f32,
    0.4578275_f64 as f32,
    0.40821073_f64 as f32,
];
/// OpenAI CLIP normalisation std (as the Python floats, rounded to `f32` like numpy does).
pub const CLIP_STD: [f32; 3] = [
    0.26862954_f64 as f32,
    0.26130258_f64 as f32,
    0.27577711_f64 as f32,
];

/// What [`preprocess`] produces: `3 x image_size x image_size` normalised CHW floats.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PreprocessConfig {
    /// `S`: the shorter side is resized to it, then an `S`x`S` center crop is taken.
    pub image_size: u32,
    /// Per-channel mean subtracted after rescaling to `[0, 1]`.
    pub mean: [f32; 3],
    /// Per-channel std divided by after subtracting the mean.
    pub std: [f32; 3],
}

impl PreprocessConfig {
    /// The OpenAI CLIP configuration at the given input resolution (224 for ViT-B/32 and B/16).
    pub fn clip(image_size: u32) -> Self {
        Self {
            image_size,
            mean: CLIP_MEAN,
            std: CLIP_STD,
        }
    }

    /// Number of floats [`preprocess`] writes: `3 * image_size^2`.
    pub fn tensor_len(&self) -> usize {
        3 * self.image_size as usize * self.image_size as usize
    }
}

// ---------------------------------------------------------------------------------------------
// Pillow's bicubic resampling (libImaging/Resample.c), 8 bits per channel.

/// Fixed-point precision of the coefficients: `32 - 8 - 2`.
const PRECISION_BITS: u32 = 22;
const BICUBIC_SUPPORT: f64 = 2.0;

#[inline]
fn bicubic_filter(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = if x < 0.0 { -x } else { x };
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Integer resampling coefficients for one axis, for the output indices `outs`: for each, the
/// first input index, the number of taps and `ksize` fixed-point weights (`ksize` is the stride).
#[derive(Debug, Clone)]
struct Coeffs {
    outs: Range<usize>,
    ksize: usize,
    /// `(first input index, number of taps)` per output index.
    bounds: Vec<(usize, usize)>,
    /// `bounds.len() * ksize` weights scaled by `2^PRECISION_BITS`.
    weights: Vec<i32>,
}

impl Coeffs {
    /// Port of `precompute_coeffs` + `normalize_coeffs_8bpc` for an output of `out_size`, computed
    /// only for the indices `outs` (each index's coefficients depend on nothing else). `in0..in1`
    /// is the source box on this axis, as `f32` like Pillow's `float box[4]`.
    fn new(in_size: usize, in0: f32, in1: f32, out_size: usize, outs: Range<usize>) -> Self {
        // Pillow: `scale = (double)(in1 - in0) / outSize` with the subtraction done in float.
        let scale = f64::from(in1 - in0) / out_size as f64;
        let filterscale = if scale < 1.0 { 1.0 } else { scale };
        let support = BICUBIC_SUPPORT * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let mut bounds = Vec::with_capacity(outs.len());
        let mut weights = vec![0i32; outs.len() * ksize];
        let mut k = vec![0f64; ksize];
        let ss = 1.0 / filterscale;
        for (xx, wrow) in outs.clone().zip(weights.chunks_exact_mut(ksize)) {
            let center = f64::from(in0) + (xx as f64 + 0.5) * scale;
            // `(int)` truncates toward zero, as `as` does.
            let xmin = ((center - support + 0.5) as i64).clamp(0, in_size as i64);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
            let count = (xmax - xmin).clamp(0, ksize as i64) as usize;
            let xmin = xmin as usize;
            let mut ww = 0.0;
            for (x, kx) in k.iter_mut().enumerate().take(count) {
                let w = bicubic_filter(((x + xmin) as f64 - center + 0.5) * ss);
                *kx = w;
                ww += w;
            }
            for (kx, wx) in k.iter().zip(wrow.iter_mut()).take(count) {
                let v = if ww != 0.0 { kx / ww } else { *kx };
                let scaled = v * f64::from(1u32 << PRECISION_BITS);
                *wx = if v < 0.0 {
                    (-0.5 + scaled) as i32
                } else {
                    (0.5 + scaled) as i32
                };
            }
            bounds.push((xmin, count));
        }
        Self {
            outs,
            ksize,
            bounds,
            weights,
        }
    }

    #[inline]
    fn taps(&self, out: usize) -> (usize, &[i32]) {
        let i = out - self.outs.start;
        let (first, count) = self.bounds[i];
        let base = i * self.ksize;
        (first, &self.weights[base..base + count])
    }
}

#[inline(always)]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

const ROUNDING: i32 = 1 << (PRECISION_BITS - 1);

/// A rectangle of the full output, `x0..x0 + w` by `y0..y0 + h`.
#[derive(Debug, Clone, Copy)]
struct Window {
    x0: usize,
    y0: usize,
    w: usize,
    h: usize,
}

/// Part of an RGB image: `data` row 0, byte 0 is pixel `(x_off, y_off)` of the full image.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [u8],
    stride: usize,
    x_off: usize,
    y_off: usize,
}

impl View<'_> {
    /// Row `y` (full-image coordinates), columns `x0..x1`.
    #[inline]
    fn row(&self, y: usize, x0: usize, x1: usize) -> &[u8] {
        let start = (y - self.y_off) * self.stride + (x0 - self.x_off) * 3;
        &self.data[start..start + (x1 - x0) * 3]
    }

    fn copy(&self, xs: Range<usize>, ys: Range<usize>) -> Vec<u8> {
        let mut out = Vec::with_capacity(xs.len() * ys.len() * 3);
        for y in ys {
            out.extend_from_slice(self.row(y, xs.start, xs.end));
        }
        out
    }
}

/// The source indices that output indices `out` read: `min(first)..max(first + count)`.
fn source_span(c: &Coeffs, out: Range<usize>) -> Range<usize> {
    let mut lo = usize::MAX;
    let mut hi = 0;
    for o in out {
        let (first, count) = c.bounds[o - c.outs.start];
        lo = lo.min(first);
        hi = hi.max(first + count);
    }
    lo.min(hi)..hi
}

/// Source rows the horizontal kernel handles at once (a block is transposed so that the same
/// taps apply to `ROW_BLOCK * 3` contiguous bytes, which vectorises).
const ROW_BLOCK: usize = 16;
const LANES: usize = ROW_BLOCK * 3;

/// Whether the AVX2 versions of the kernels can run (checked once by `std`, then cached).
#[inline]
fn use_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Horizontal pass: output columns `xs` for source rows `ys`, as a packed `ys x xs` buffer.
fn horizontal_pass(src: View<'_>, c: &Coeffs, xs: Range<usize>, ys: Range<usize>) -> Vec<u8> {
    horizontal_pass_with(src, c, xs, ys, use_avx2())
}

fn horizontal_pass_with(
    src: View<'_>,
    c: &Coeffs,
    xs: Range<usize>,
    ys: Range<usize>,
    avx2: bool,
) -> Vec<u8> {
    let mut out = vec![0u8; xs.len() * 3 * ys.len()];
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: the caller checked that the CPU supports AVX2.
        unsafe { horizontal_avx2(src, c, xs, ys, &mut out) };
        return out;
    }
    let _ = avx2;
    horizontal_kernel(src, c, xs, ys, &mut out);
    out
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn horizontal_avx2(src: View<'_>, c: &Coeffs, xs: Range<usize>, ys: Range<usize>, out: &mut [u8]) {
    horizontal_kernel(src, c, xs, ys, out)
}

/// Pillow's `ImagingResampleHorizontal_8bpc` (same sums, same rounding and clipping), computed
/// for `ROW_BLOCK` rows at a time on a transposed copy of the block.
#[inline(always)]
fn horizontal_kernel(
    src: View<'_>,
    c: &Coeffs,
    xs: Range<usize>,
    ys: Range<usize>,
    out: &mut [u8],
) {
    let row_len = xs.len() * 3;
    let span = source_span(c, xs.clone());
    // Column-major block: byte `x * LANES + r * 3 + ch` is row `r`, column `span.start + x`.
    let mut block = vec![0u8; span.len() * LANES];
    let mut y = ys.start;
    while y < ys.end {
        let rows = ROW_BLOCK.min(ys.end - y);
        for r in 0..rows {
            let srow = src.row(y + r, span.start, span.end);
            for (px, col) in srow.chunks_exact(3).zip(block.chunks_exact_mut(LANES)) {
                col[r * 3..r * 3 + 3].copy_from_slice(px);
            }
        }
        let out_block = &mut out[(y - ys.start) * row_len..(y - ys.start + rows) * row_len];
        for (oi, xx) in xs.clone().enumerate() {
            let (first, ks) = c.taps(xx);
            let mut acc = [ROUNDING; LANES];
            let cols =
                &block[(first - span.start) * LANES..(first - span.start + ks.len()) * LANES];
            for (col, &k) in cols.chunks_exact(LANES).zip(ks) {
                let col: &[u8; LANES] = col.try_into().expect("LANES bytes");
                for (a, &p) in acc.iter_mut().zip(col) {
                    *a += i32::from(p) * k;
                }
            }
            for (r, o) in out_block.chunks_exact_mut(row_len).enumerate() {
                let o = &mut o[oi * 3..oi * 3 + 3];
                o[0] = clip8(acc[r * 3]);
                o[1] = clip8(acc[r * 3 + 1]);
                o[2] = clip8(acc[r * 3 + 2]);
            }
        }
        y += rows;
    }
}

/// Vertical pass: output rows `ys` for source columns `xs`, as a packed `ys x xs` buffer.
fn vertical_pass(src: View<'_>, c: &Coeffs, xs: Range<usize>, ys: Range<usize>) -> Vec<u8> {
    vertical_pass_with(src, c, xs, ys, use_avx2())
}

fn vertical_pass_with(
    src: View<'_>,
    c: &Coeffs,
    xs: Range<usize>,
    ys: Range<usize>,
    avx2: bool,
) -> Vec<u8> {
    let mut out = vec![0u8; xs.len() * 3 * ys.len()];
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: the caller checked that the CPU supports AVX2.
        unsafe { vertical_avx2(src, c, xs, ys, &mut out) };
        return out;
    }
    let _ = avx2;
    vertical_kernel(src, c, xs, ys, &mut out);
    out
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn vertical_avx2(src: View<'_>, c: &Coeffs, xs: Range<usize>, ys: Range<usize>, out: &mut [u8]) {
    vertical_kernel(src, c, xs, ys, out)
}

/// Pillow's `ImagingResampleVertical_8bpc`: for each output row, the taps' rows are accumulated
/// across the whole row (integer sums, so the order does not change the result).
#[inline(always)]
fn vertical_kernel(src: View<'_>, c: &Coeffs, xs: Range<usize>, ys: Range<usize>, out: &mut [u8]) {
    let row_len = xs.len() * 3;
    let mut acc = vec![0i32; row_len];
    for (yy, orow) in ys.zip(out.chunks_exact_mut(row_len)) {
        let (first, ks) = c.taps(yy);
        acc.fill(ROUNDING);
        for (t, &k) in ks.iter().enumerate() {
            let row = src.row(first + t, xs.start, xs.end);
            for (a, &p) in acc.iter_mut().zip(row) {
                *a += i32::from(p) * k;
            }
        }
        for (o, &a) in orow.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
}

/// Pillow's `ImagingResampleInner` restricted to a window of the `out_w`x`out_h` output: each
/// output pixel depends only on its own coefficients, so the window's bytes equal the same
/// region of the full resize.
fn resample_window(
    img: &RgbImage,
    bx: [f32; 4],
    out_w: usize,
    out_h: usize,
    win: Window,
) -> RgbImage {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    debug_assert!(win.x0 + win.w <= out_w && win.y0 + win.h <= out_h);
    let src = View {
        data: img.as_raw(),
        stride: in_w * 3,
        x_off: 0,
        y_off: 0,
    };
    let xs = win.x0..win.x0 + win.w;
    let ys = win.y0..win.y0 + win.h;
    // Same conditions as Pillow, including its `box[2] != xsize` comparison.
    let need_h = out_w != in_w || bx[0] != 0.0 || bx[2] != out_w as f32;
    let need_v = out_h != in_h || bx[1] != 0.0 || bx[3] != out_h as f32;
    // Pillow 13: "if height is being scaled down more than twice the amount the width is, run
    // the vertical pass first". The order matters: each pass rounds and clips to uint8.
    let (dh, dw) = (in_h as i64 - out_h as i64, in_w as i64 - out_w as i64);
    let horizontal_first = !(dh > 0 && dh > dw * 2);
    let horiz = need_h.then(|| Coeffs::new(in_w, bx[0], bx[2], out_w, xs.clone()));
    let vert = need_v.then(|| Coeffs::new(in_h, bx[1], bx[3], out_h, ys.clone()));

    let out = match (&horiz, &vert) {
        (None, None) => src.copy(xs, ys),
        (Some(h), None) => horizontal_pass(src, h, xs, ys),
        (None, Some(v)) => vertical_pass(src, v, xs, ys),
        (Some(h), Some(v)) if horizontal_first => {
            let rows = source_span(v, ys.clone());
            let t = horizontal_pass(src, h, xs.clone(), rows.clone());
            let tv = View {
                data: &t,
                stride: win.w * 3,
                x_off: win.x0,
                y_off: rows.start,
            };
            vertical_pass(tv, v, xs, ys)
        }
        (Some(h), Some(v)) => {
            let cols = source_span(h, xs.clone());
            let t = vertical_pass(src, v, cols.clone(), ys.clone());
            let tv = View {
                data: &t,
                stride: cols.len() * 3,
                x_off: cols.start,
                y_off: win.y0,
            };
            horizontal_pass(tv, h, xs, ys)
        }
    };
    RgbImage::from_raw(win.w as u32, win.h as u32, out).expect("buffer size matches dimensions")
}

/// Resizes to `w`x`h` with Pillow's BICUBIC filter: the same bytes as
/// `Image.resize((w, h), Image.BICUBIC)` for an RGB image (antialiased when shrinking).
///
/// # Panics
/// If `w` or `h` is 0 or the image is empty.
pub fn resize_bicubic(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    let bx = [0.0, 0.0, img.width() as f32, img.height() as f32];
    resize_bicubic_box(img, bx, w, h)
}

/// Resizes the source region `bx = [left, top, right, bottom]` (fractional pixel coordinates)
/// to `w`x`h`: the same bytes as Pillow's `Image.resize((w, h), Image.BICUBIC, box=bx)`.
/// As in Pillow, the filter may read source pixels just outside the box (but inside the image);
/// crop first for torchvision's `resized_crop` behaviour, which does not.
///
/// # Panics
/// On what Pillow refuses with `ValueError`: `w` or `h` 0, a negative box offset, a box beyond
/// the image, a box with `right < left` or `bottom < top`; also on an empty image.
pub fn resize_bicubic_box(img: &RgbImage, bx: [f32; 4], w: u32, h: u32) -> RgbImage {
    check_box(img, bx, w, h);
    if (w, h) == img.dimensions() && bx == [0.0, 0.0, w as f32, h as f32] {
        return img.clone();
    }
    let win = Window {
        x0: 0,
        y0: 0,
        w: w as usize,
        h: h as usize,
    };
    resample_window(img, bx, w as usize, h as usize, win)
}

fn check_box(img: &RgbImage, bx: [f32; 4], w: u32, h: u32) {
    assert!(w > 0 && h > 0, "resize: height and width must be > 0");
    assert!(
        img.width() > 0 && img.height() > 0,
        "resize: the source image is empty"
    );
    assert!(
        bx[0] >= 0.0 && bx[1] >= 0.0,
        "resize: box offset can't be negative: {bx:?}"
    );
    assert!(
        bx[2] <= img.width() as f32 && bx[3] <= img.height() as f32,
        "resize: box can't exceed original image size: {bx:?} for {}x{}",
        img.width(),
        img.height()
    );
    assert!(
        bx[2] - bx[0] >= 0.0 && bx[3] - bx[1] >= 0.0,
        "resize: box can't be empty: {bx:?}"
    );
}

/// The `(width, height)` that `shortest_edge = size` resizing gives, as transformers'
/// `get_resize_output_image_size(..., default_to_square=False)`: the shorter side becomes
/// `size`, the longer `int(size * long / short)` (truncated).
pub fn shorter_side_size(width: u32, height: u32, size: u32) -> (u32, u32) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    // int * int is exact; one correctly rounded f64 division, then truncation, as in Python.
    let new_long = ((u64::from(size) * u64::from(long)) as f64 / f64::from(short.max(1))) as u32;
    if width <= height {
        (size, new_long)
    } else {
        (new_long, size)
    }
}

/// Resizes (bicubic, Pillow-exact) so the shorter side is `size`; see [`shorter_side_size`].
pub fn resize_shorter_side(img: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = shorter_side_size(img.width(), img.height(), size);
    resize_bicubic(img, w, h)
}

/// First source index of a centered crop of `crop` out of `side`: `floor((side - crop) / 2)`,
/// negative when the crop is larger (the image is then zero padded, as transformers does).
fn crop_offset(side: u32, crop: u32) -> i64 {
    (i64::from(side) - i64::from(crop)).div_euclid(2)
}

/// Center crop to `w`x`h` as transformers' `center_crop`: offset `floor((side - crop) / 2)`;
/// where the image is smaller than the crop it is padded with zeros (black).
pub fn center_crop(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    let ox = crop_offset(img.width(), w);
    let oy = crop_offset(img.height(), h);
    let (iw, ih) = (i64::from(img.width()), i64::from(img.height()));
    let mut out = RgbImage::new(w, h);
    // Output columns whose source column lies inside the image.
    let x_lo = (-ox).clamp(0, i64::from(w));
    let x_hi = (iw - ox).clamp(0, i64::from(w));
    if x_lo >= x_hi {
        return out;
    }
    let src = img.as_raw();
    let dst_stride = w as usize * 3;
    for y in 0..i64::from(h) {
        let sy = y + oy;
        if sy < 0 || sy >= ih {
            continue;
        }
        let s = ((sy * iw + x_lo + ox) * 3) as usize;
        let d = y as usize * dst_stride + x_lo as usize * 3;
        let n = ((x_hi - x_lo) * 3) as usize;
        out.as_mut()[d..d + n].copy_from_slice(&src[s..s + n]);
    }
    out
}

/// `uint8 -> normalised f32` for each channel, computed like the processor: `x * (1/255)` in
/// `f64`, rounded to `f32`, then `(x - mean) / std` in `f32`.
fn normalisation_table(cfg: &PreprocessConfig) -> [[f32; 256]; 3] {
    let mut lut = [[0f32; 256]; 3];
    for (c, table) in lut.iter_mut().enumerate() {
        for (v, t) in table.iter_mut().enumerate() {
            let x = (v as f64 * (1.0 / 255.0)) as f32;
            *t = (x - cfg.mean[c]) / cfg.std[c];
        }
    }
    lut
}

/// Writes `img` as normalised CHW floats into `out` (length `3 * width * height`), e.g. one slot
/// of a batch buffer.
///
/// # Panics
/// If `out.len() != 3 * width * height`.
pub fn to_tensor_chw(img: &RgbImage, cfg: &PreprocessConfig, out: &mut [f32]) {
    let plane = img.width() as usize * img.height() as usize;
    assert_eq!(
        out.len(),
        3 * plane,
        "to_tensor_chw: output buffer has {} floats, the {}x{} image needs {}",
        out.len(),
        img.width(),
        img.height(),
        3 * plane
    );
    let lut = normalisation_table(cfg);
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
        r[i] = lut[0][px[0] as usize];
        g[i] = lut[1][px[1] as usize];
        b[i] = lut[2][px[2] as usize];
    }
}

/// The `S`x`S` RGB image CLIP sees before normalisation: shorter side resized to `S`, then the
/// center `S`x`S` crop. Only the cropped pixels are resampled.
///
/// # Panics
/// If `image_size` is 0 or the image is empty.
pub fn resize_and_center_crop(img: &RgbImage, image_size: u32) -> RgbImage {
    assert!(image_size > 0, "preprocess: image_size must be > 0");
    let (rw, rh) = shorter_side_size(img.width(), img.height(), image_size);
    if rw < image_size || rh < image_size {
        // Unreachable for a non-empty image (the shorter side becomes S); kept for safety.
        return center_crop(&resize_bicubic(img, rw, rh), image_size, image_size);
    }
    if (rw, rh) == img.dimensions() {
        return center_crop(img, image_size, image_size);
    }
    check_box(
        img,
        [0.0, 0.0, img.width() as f32, img.height() as f32],
        rw,
        rh,
    );
    let win = Window {
        x0: crop_offset(rw, image_size) as usize,
        y0: crop_offset(rh, image_size) as usize,
        w: image_size as usize,
        h: image_size as usize,
    };
    let bx = [0.0, 0.0, img.width() as f32, img.height() as f32];
    resample_window(img, bx, rw as usize, rh as usize, win)
}

/// Full CLIP preprocessing into a caller buffer of [`PreprocessConfig::tensor_len`] floats.
pub fn preprocess_into(img: &RgbImage, cfg: &PreprocessConfig, out: &mut [f32]) {
    let crop = resize_and_center_crop(img, cfg.image_size);
    to_tensor_chw(&crop, cfg, out);
}

/// Full CLIP preprocessing: `3 * S * S` normalised CHW floats, equal to
/// `CLIPImageProcessorPil(size={"shortest_edge": S}, crop_size={"height": S, "width": S})`.
pub fn preprocess(img: &RgbImage, cfg: &PreprocessConfig) -> Vec<f32> {
    let mut out = vec![0f32; cfg.tensor_len()];
    preprocess_into(img, cfg, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_size_rule() {
        assert_eq!(shorter_side_size(97, 61, 32), (50, 32)); // int(32 * 97 / 61) = 50
        assert_eq!(shorter_side_size(61, 97, 32), (32, 50));
        assert_eq!(shorter_side_size(33, 33, 32), (32, 32));
        assert_eq!(shorter_side_size(1000, 37, 32), (864, 32));
        assert_eq!(shorter_side_size(20, 14, 224), (320, 224));
    }

    #[test]
    fn crop_offsets() {
        assert_eq!(crop_offset(50, 32), 9);
        assert_eq!(crop_offset(51, 32), 9);
        assert_eq!(crop_offset(20, 32), -6);
        assert_eq!(crop_offset(21, 32), -6); // transformers: top_pad = ceil(11 / 2) = 6
    }

    #[test]
    fn center_crop_pads_with_zeros() {
        let img = RgbImage::from_pixel(3, 2, image::Rgb([9, 9, 9]));
        let c = center_crop(&img, 5, 4);
        // offsets floor((3-5)/2) = -1, floor((2-4)/2) = -1
        for y in 0..4 {
            for x in 0..5 {
                let inside = (1..4).contains(&x) && (1..3).contains(&y);
                assert_eq!(
                    c.get_pixel(x, y).0[0],
                    if inside { 9 } else { 0 },
                    "{x},{y}"
                );
            }
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::from_pixel(37, 23, image::Rgb([200, 3, 255]));
        for (w, h) in [(5, 5), (100, 7), (37, 23), (1, 1)] {
            let r = resize_bicubic(&img, w, h);
            assert!(r.pixels().all(|p| p.0 == [200, 3, 255]), "{w}x{h}");
        }
    }

    #[test]
    fn simd_and_portable_kernels_agree() {
        // Pseudo-random content with hard 0/255 edges so that clipping is exercised.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let img = RgbImage::from_fn(53, 41, |_, _| {
            let v = next();
            let pick = |b: u64| match b % 4 {
                0 => 0,
                1 => 255,
                _ => (b >> 8) as u8,
            };
            image::Rgb([pick(v), pick(v >> 16), pick(v >> 32)])
        });
        let src = View {
            data: img.as_raw(),
            stride: 53 * 3,
            x_off: 0,
            y_off: 0,
        };
        for (out_w, out_h) in [(7, 5), (53, 41), (120, 90), (17, 80)] {
            let h = Coeffs::new(53, 0.0, 53.0, out_w, 0..out_w);
            let v = Coeffs::new(41, 0.0, 41.0, out_h, 0..out_h);
            for avx2 in [false, use_avx2()] {
                let a = horizontal_pass_with(src, &h, 1..out_w, 2..39, avx2);
                let b = horizontal_pass_with(src, &h, 1..out_w, 2..39, false);
                assert_eq!(a, b, "horizontal {out_w}x{out_h}");
                let a = vertical_pass_with(src, &v, 3..50, 0..out_h, avx2);
                let b = vertical_pass_with(src, &v, 3..50, 0..out_h, false);
                assert_eq!(a, b, "vertical {out_w}x{out_h}");
            }
            // And the blocked horizontal kernel equals the plain per-pixel formula.
            let got = horizontal_pass_with(src, &h, 0..out_w, 0..41, false);
            for y in 0..41 {
                for xx in 0..out_w {
                    let (first, ks) = h.taps(xx);
                    for ch in 0..3 {
                        let mut acc = ROUNDING;
                        for (t, &k) in ks.iter().enumerate() {
                            acc += i32::from(img.get_pixel((first + t) as u32, y as u32).0[ch]) * k;
                        }
                        assert_eq!(got[(y * out_w + xx) * 3 + ch], clip8(acc));
                    }
                }
            }
        }
    }

    #[test]
    fn extreme_aspect_ratio_only_computes_the_crop() {
        // 20000x2 -> shorter side 64 means a 640000x64 resize; only the 64x64 crop is computed.
        let img = RgbImage::from_fn(20000, 2, |x, _| image::Rgb([(x % 251) as u8, 0, 255]));
        let out = preprocess(&img, &PreprocessConfig::clip(64));
        assert_eq!(out.len(), 3 * 64 * 64);
        assert!(out.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn tiny_images_upscale() {
        for (w, h) in [(1, 1), (2, 1), (1, 3), (2, 2)] {
            let img = RgbImage::from_pixel(w, h, image::Rgb([10, 20, 30]));
            let c = resize_and_center_crop(&img, 16);
            assert_eq!(c.dimensions(), (16, 16));
            assert!(c.pixels().all(|p| p.0 == [10, 20, 30]), "{w}x{h}");
        }
    }

    #[test]
    #[should_panic(expected = "box offset can't be negative")]
    fn negative_box_is_refused() {
        resize_bicubic_box(&RgbImage::new(4, 4), [-0.5, 0.0, 4.0, 4.0], 2, 2);
    }

    #[test]
    #[should_panic(expected = "box can't exceed original image size")]
    fn box_beyond_the_image_is_refused() {
        resize_bicubic_box(&RgbImage::new(4, 4), [0.0, 0.0, 4.5, 4.0], 2, 2);
    }

    #[test]
    fn window_equals_full_resize_then_crop() {
        let img = RgbImage::from_fn(41, 29, |x, y| {
            image::Rgb([
                (x * 7 % 256) as u8,
                (y * 13 % 256) as u8,
                ((x * y) % 256) as u8,
            ])
        });
        for s in [8, 16, 29, 40] {
            let full = resize_shorter_side(&img, s);
            let a = center_crop(&full, s, s);
            let b = resize_and_center_crop(&img, s);
            assert_eq!(a, b, "S={s}");
        }
    }
}
