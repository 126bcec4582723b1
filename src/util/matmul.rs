//! bf16 matrix products with f32 accumulation on Intel AMX (`--matmul bf16`).
//!
//! Why here and not through burn's bf16 dtype: burn-flex 0.22 runs a bf16 matmul by converting
//! both operands to f32 and calling gemm's f32 kernel, so a bf16 model is *slower* than an f32
//! one on a CPU. What makes bf16 pay on a CPU is a matrix unit: AMX's `tdpbf16ps` multiplies
//! 16x32 by 32x16 bf16 tiles into 16x16 f32 accumulators, measured at 775 GFLOP/s on one core of
//! this project's Xeon against about 170 for gemm's AVX-512 f32 kernel. So the model stays f32
//! (parameters, activations, gradients, every elementwise operator); only the products go
//! through bf16, as PyTorch's CPU autocast does for linear layers. The kernel is installed into
//! gemm (patched with one hook, `patches/gemm`), which every burn-flex f32 product calls.
//!
//! The driver (packing, blocking, edges, strides, threads) is plain Rust and runs on any
//! processor with an emulated tile multiply, so its tests run in CI on any machine; on a
//! processor with AMX the same tests check the real tiles against the emulation.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use rayon::prelude::*;

/// Precision of the matrix products in every f32 computation of the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MatmulPrecision {
    /// gemm's f32 kernels (the default: bit-for-bit what the tests' fixtures were made with).
    #[default]
    F32,
    /// Operands rounded to bf16 (round to nearest even), products accumulated in f32, on AMX.
    Bf16,
}

impl std::str::FromStr for MatmulPrecision {
    type Err = MatmulError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "fp32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            other => Err(MatmulError::Unknown(other.to_string())),
        }
    }
}

impl std::fmt::Display for MatmulPrecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MatmulError {
    #[error("unknown matmul precision `{0}` (expected `f32` or `bf16`)")]
    Unknown(String),
    #[error(
        "bf16 matmuls need Intel AMX (amx_bf16 and amx_tile), which this processor does not \
         have ({0}); on it bf16 would be slower than f32, so use `--matmul f32`"
    )]
    NoAmx(String),
}

/// Products smaller than this (m * n * k) stay on gemm's f32 kernels: packing and tile set-up
/// cost more than they save there. `COFT_MATMUL_MIN_WORK` overrides it (0: every product).
const DEFAULT_MIN_WORK: usize = 64 * 64 * 64;
static MIN_WORK: AtomicUsize = AtomicUsize::new(DEFAULT_MIN_WORK);
static PRODUCTS: AtomicUsize = AtomicUsize::new(0);

/// Install `precision` for every later f32 product of the process (gemm's hook).
pub fn set_matmul_precision(precision: MatmulPrecision) -> Result<(), MatmulError> {
    match precision {
        MatmulPrecision::F32 => gemm::set_f32_kernel(None),
        MatmulPrecision::Bf16 => {
            amx::enable().map_err(MatmulError::NoAmx)?;
            if let Some(w) = std::env::var("COFT_MATMUL_MIN_WORK")
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
            {
                MIN_WORK.store(w, Ordering::Relaxed);
            }
            gemm::set_f32_kernel(Some(amx_hook));
        }
    }
    Ok(())
}

/// The precision installed now.
pub fn matmul_precision() -> MatmulPrecision {
    if gemm::f32_kernel_installed() {
        MatmulPrecision::Bf16
    } else {
        MatmulPrecision::F32
    }
}

/// How many products the bf16 kernel has taken so far (the rest went to gemm).
pub fn bf16_products() -> usize {
    PRODUCTS.load(Ordering::Relaxed)
}

/// Whether this processor and kernel can run the bf16 kernel.
pub fn amx_available() -> bool {
    amx::enable().is_ok()
}

/// f32 to bf16 bits, rounding to nearest even (as `half::bf16::from_f32` and AVX512_BF16's
/// `vcvtneps2bf16`); NaN stays NaN.
#[inline(always)]
pub fn bf16_bits(x: f32) -> u16 {
    // Branch-free, so the packing loops vectorise: NaN is picked by a select, not a jump.
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16;
    let quiet = (b >> 16) | 0x40;
    (if b & 0x7fff_ffff > 0x7f80_0000 {
        quiet
    } else {
        rounded
    }) as u16
}

#[cfg(any(test, not(target_arch = "x86_64")))]
#[inline(always)]
fn bf16_value(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// One 32x32 block of C from `kb` k-steps of packed A and B (see [`Packed`]): C is written
/// row-major with a row stride of 32 floats.
type Micro = unsafe fn(a: *const u16, b: *const u16, kb: usize, c: *mut f32);

/// The tile multiply done in Rust, with AMX's arithmetic: exact bf16 products (a bf16 times
/// a bf16 is exact in f32), each pair summed and added in f32. Used where AMX is missing,
/// so the driver is tested on every machine, and as the reference for the AMX tiles.
#[cfg(any(test, not(target_arch = "x86_64")))]
unsafe fn micro_emulated(a: *const u16, b: *const u16, kb: usize, c: *mut f32) {
    let mut acc = [0f32; 32 * 32];
    for step in 0..kb {
        let a = a.add(step * 1024);
        let b = b.add(step * 1024);
        for r in 0..32 {
            // A tile h = r / 16, row r % 16: 32 bf16 of k.
            let arow = a.add((r / 16) * 512 + (r % 16) * 32);
            for col in 0..32 {
                // B tile h = col / 16; its row p holds (k = 2p, 2p + 1) for 16 columns.
                let bt = b.add((col / 16) * 512 + (col % 16) * 2);
                let mut s = acc[r * 32 + col];
                for p in 0..16 {
                    let x0 = bf16_value(*arow.add(2 * p)) * bf16_value(*bt.add(p * 32));
                    let x1 = bf16_value(*arow.add(2 * p + 1)) * bf16_value(*bt.add(p * 32 + 1));
                    s += x0 + x1;
                }
                acc[r * 32 + col] = s;
            }
        }
    }
    std::ptr::copy_nonoverlapping(acc.as_ptr(), c, 32 * 32);
}

/// Packed bf16 operands. A: for each 32-row panel and each 32-deep k-step, two 16x32 tiles
/// (rows 0-15, then 16-31), 1 KiB each, row stride 64 bytes. B: for each 32-column panel and
/// each k-step, two 16x(16 pairs) tiles (columns 0-15, then 16-31), row `p` holding
/// `(B[2p][j], B[2p+1][j])` for its 16 columns: the "VNNI" layout `tdpbf16ps` reads. Padding
/// (rows, columns or depth beyond the matrix) is zero.
struct Packed {
    data: Vec<u16>,
}

/// Reused packing buffers: a product is often repeated with the same shapes every step, and a
/// fresh multi-MiB buffer each time costs page faults that show in profiles.
static BUFFERS: Mutex<Vec<Vec<u16>>> = Mutex::new(Vec::new());

impl Packed {
    /// A buffer of `len`; zeroed only when the matrix does not fill it (`padded`), since
    /// packing writes every other element.
    fn new(len: usize, padded: bool) -> Self {
        let mut data = BUFFERS
            .lock()
            .ok()
            .and_then(|mut b| b.pop())
            .unwrap_or_default();
        if padded {
            data.clear();
        }
        data.resize(len, 0);
        data.truncate(len);
        Self { data }
    }
}

impl Drop for Packed {
    fn drop(&mut self) {
        if let Ok(mut b) = BUFFERS.lock() {
            if b.len() < 8 {
                b.push(std::mem::take(&mut self.data));
            }
        }
    }
}

/// Strided f32 matrix view (element `(i, j)` at `ptr + i * rs + j * cs`).
#[derive(Clone, Copy)]
struct View {
    ptr: *const f32,
    rs: isize,
    cs: isize,
}
unsafe impl Send for View {}
unsafe impl Sync for View {}

#[derive(Clone, Copy)]
struct ViewMut {
    ptr: *mut f32,
    rs: isize,
    cs: isize,
}
unsafe impl Send for ViewMut {}
unsafe impl Sync for ViewMut {}

/// Panel `ip` of A (`rows` x `k`, viewed by `a`) into `out` (`kp * 32` u16).
unsafe fn pack_a_panel(out: &mut [u16], a: View, ip: usize, m: usize, k: usize) {
    let r0 = ip * 32;
    let rows = (m - r0).min(32);
    if a.cs == 1 {
        for r in 0..rows {
            let src = a.ptr.offset((r0 + r) as isize * a.rs);
            let base = (r / 16) * 512 + (r % 16) * 32;
            for (kb, chunk) in std::slice::from_raw_parts(src, k).chunks(32).enumerate() {
                let dst = &mut out[kb * 1024 + base..kb * 1024 + base + chunk.len()];
                for (d, s) in dst.iter_mut().zip(chunk) {
                    *d = bf16_bits(*s);
                }
            }
        }
    } else if a.rs == 1 {
        // A transposed (a weight gradient's `X^T`): 32 rows are contiguous for each k. Convert
        // those runs (vectorised), then transpose the 32x32 block in L1; a strided scalar loop
        // over memory made these products 20-40% slower than the forward ones.
        let mut tmp = [[0u16; 32]; 32]; // [k within block][row]
        for kb in 0..k.div_ceil(32) {
            let k0 = kb * 32;
            let kn = (k - k0).min(32);
            for (kc, t) in tmp.iter_mut().enumerate().take(kn) {
                let src = std::slice::from_raw_parts(
                    a.ptr.offset(r0 as isize + (k0 + kc) as isize * a.cs),
                    rows,
                );
                for (d, x) in t.iter_mut().zip(src) {
                    *d = bf16_bits(*x);
                }
            }
            let block = &mut out[kb * 1024..kb * 1024 + 1024];
            for r in 0..rows {
                let dst = &mut block[r * 32..r * 32 + kn];
                for (kc, d) in dst.iter_mut().enumerate() {
                    *d = tmp[kc][r];
                }
            }
        }
    } else {
        for kk in 0..k {
            let (kb, kc) = (kk / 32, kk % 32);
            for r in 0..rows {
                let s = *a.ptr.offset((r0 + r) as isize * a.rs + kk as isize * a.cs);
                out[kb * 1024 + (r / 16) * 512 + (r % 16) * 32 + kc] = bf16_bits(s);
            }
        }
    }
}

/// Panel `jp` of B (`k` x `n`, viewed by `b`) into `out` (`kp * 32` u16).
unsafe fn pack_b_panel(out: &mut [u16], b: View, jp: usize, n: usize, k: usize) {
    let c0 = jp * 32;
    let cols = (n - c0).min(32);
    let at = |kk: usize, c: usize| {
        (kk / 32) * 1024 + (c / 16) * 512 + ((kk % 32) / 2) * 32 + (c % 16) * 2 + (kk % 2)
    };
    if b.cs == 1 && cols == 32 {
        // Two rows of k at a time, interleaved into each tile row: contiguous 32-element
        // stores the compiler vectorises.
        let row = |kk: usize| {
            std::slice::from_raw_parts(b.ptr.offset(kk as isize * b.rs + c0 as isize), 32)
        };
        for kk in (0..k).step_by(2) {
            let r0 = row(kk);
            let base = (kk / 32) * 1024 + ((kk % 32) / 2) * 32;
            for h in 0..2 {
                let dst = &mut out[base + h * 512..base + h * 512 + 32];
                let x0 = &r0[h * 16..h * 16 + 16];
                if kk + 1 < k {
                    let x1 = &row(kk + 1)[h * 16..h * 16 + 16];
                    for c in 0..16 {
                        dst[2 * c] = bf16_bits(x0[c]);
                        dst[2 * c + 1] = bf16_bits(x1[c]);
                    }
                } else {
                    for c in 0..16 {
                        dst[2 * c] = bf16_bits(x0[c]);
                        dst[2 * c + 1] = 0;
                    }
                }
            }
        }
    } else if b.cs == 1 {
        for kk in 0..k {
            let src =
                std::slice::from_raw_parts(b.ptr.offset(kk as isize * b.rs + c0 as isize), cols);
            for (c, s) in src.iter().enumerate() {
                out[at(kk, c)] = bf16_bits(*s);
            }
        }
    } else if b.rs == 1 {
        // B transposed (an input gradient's `W^T`): each column's k values are contiguous.
        // Convert 32 of them per column (vectorised) into bf16 pairs, then place the pairs:
        // within a k-block, pair `p` of column `c` is word `(c / 16) * 256 + p * 16 + c % 16`.
        let mut tmp = [[0u16; 32]; 32]; // [column][k within block]
        for kb in 0..k.div_ceil(32) {
            let k0 = kb * 32;
            let kn = (k - k0).min(32);
            for (c, t) in tmp.iter_mut().enumerate().take(cols) {
                let src = std::slice::from_raw_parts(
                    b.ptr.offset(k0 as isize + (c0 + c) as isize * b.cs),
                    kn,
                );
                for (d, x) in t.iter_mut().zip(src) {
                    *d = bf16_bits(*x);
                }
                // An odd last k leaves the pair's second half zero (as the padding is).
                for d in t.iter_mut().skip(kn) {
                    *d = 0;
                }
            }
            let block = &mut out[kb * 1024..kb * 1024 + 1024];
            let pairs = kn.div_ceil(2);
            for (c, t) in tmp.iter().enumerate().take(cols) {
                let base = (c / 16) * 512 + (c % 16) * 2;
                for p in 0..pairs {
                    block[base + p * 32] = t[2 * p];
                    block[base + p * 32 + 1] = t[2 * p + 1];
                }
            }
        }
    } else {
        for c in 0..cols {
            for kk in 0..k {
                let s = *b.ptr.offset(kk as isize * b.rs + (c0 + c) as isize * b.cs);
                out[at(kk, c)] = bf16_bits(s);
            }
        }
    }
}

/// Add a 32x32 block (row stride 32) into `dst` at `(i0, j0)`, clipped to `m` x `n`, as
/// gemm's contract says: `dst := alpha * dst (if read_dst) + beta * block`.
#[allow(clippy::too_many_arguments)]
unsafe fn write_block(
    block: &[f32; 1024],
    dst: ViewMut,
    i0: usize,
    j0: usize,
    m: usize,
    n: usize,
    read_dst: bool,
    alpha: f32,
    beta: f32,
) {
    let rows = (m - i0).min(32);
    let cols = (n - j0).min(32);
    for r in 0..rows {
        let src = &block[r * 32..r * 32 + cols];
        let row = dst
            .ptr
            .offset((i0 + r) as isize * dst.rs + j0 as isize * dst.cs);
        if dst.cs == 1 {
            let out = std::slice::from_raw_parts_mut(row, cols);
            match (read_dst, beta == 1.0) {
                (false, true) => out.copy_from_slice(src),
                (false, false) => out.iter_mut().zip(src).for_each(|(d, s)| *d = beta * s),
                (true, _) => out
                    .iter_mut()
                    .zip(src)
                    .for_each(|(d, s)| *d = alpha * *d + beta * s),
            }
        } else {
            for (c, s) in src.iter().enumerate() {
                let d = row.offset(c as isize * dst.cs);
                *d = if read_dst {
                    alpha * *d + beta * s
                } else {
                    beta * s
                };
            }
        }
    }
}

/// `dst := alpha * dst (if read_dst) + beta * a * b` with bf16 operands and f32 accumulation,
/// `a` m x k, `b` k x n, on `threads` threads (1: this thread only), each 32x32 block by `micro`.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_bf16(
    m: usize,
    n: usize,
    k: usize,
    dst: ViewMut,
    read_dst: bool,
    a: View,
    b: View,
    alpha: f32,
    beta: f32,
    threads: usize,
    micro: Micro,
    tiles: bool,
) {
    let kb = k.div_ceil(32);
    let panel = kb * 1024; // u16 per 32-wide panel
    let (pm, pn) = (m.div_ceil(32), n.div_ceil(32));
    let mut ap = Packed::new(pm * panel, !m.is_multiple_of(32) || !k.is_multiple_of(32));
    let mut bp = Packed::new(pn * panel, !n.is_multiple_of(32) || !k.is_multiple_of(32));
    let parallel = threads > 1;
    if parallel {
        ap.data
            .par_chunks_mut(panel)
            .enumerate()
            .for_each(|(ip, out)| pack_a_panel(out, a, ip, m, k));
        bp.data
            .par_chunks_mut(panel)
            .enumerate()
            .for_each(|(jp, out)| pack_b_panel(out, b, jp, n, k));
    } else {
        for (ip, out) in ap.data.chunks_mut(panel).enumerate() {
            pack_a_panel(out, a, ip, m, k);
        }
        for (jp, out) in bp.data.chunks_mut(panel).enumerate() {
            pack_b_panel(out, b, jp, n, k);
        }
    }
    // Blocks of B panels that stay in L2 (about 512 KiB) while every A panel passes over them.
    let nb = ((512 * 1024) / (panel * 2)).clamp(1, pn);
    let row_chunk = 4; // A panels per task
    let tasks: Vec<(usize, usize)> = (0..pn.div_ceil(nb))
        .flat_map(|jb| (0..pm.div_ceil(row_chunk)).map(move |ic| (jb, ic)))
        .collect();
    let (ap, bp) = (&ap.data, &bp.data);
    let run = |&(jb, ic): &(usize, usize)| {
        if tiles {
            amx::configure();
        }
        let mut block = [0f32; 1024];
        for jp in jb * nb..((jb + 1) * nb).min(pn) {
            for ip in ic * row_chunk..((ic + 1) * row_chunk).min(pm) {
                micro(
                    ap.as_ptr().add(ip * panel),
                    bp.as_ptr().add(jp * panel),
                    kb,
                    block.as_mut_ptr(),
                );
                write_block(&block, dst, ip * 32, jp * 32, m, n, read_dst, alpha, beta);
            }
        }
        if tiles {
            amx::release();
        }
    };
    if parallel {
        tasks.par_iter().for_each(run);
    } else {
        tasks.iter().for_each(run);
    }
}

/// The gemm hook: takes f32 products of at least [`MIN_WORK`] multiply-adds.
#[allow(clippy::too_many_arguments)]
unsafe fn amx_hook(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_cs: isize,
    dst_rs: isize,
    read_dst: bool,
    lhs: *const f32,
    lhs_cs: isize,
    lhs_rs: isize,
    rhs: *const f32,
    rhs_cs: isize,
    rhs_rs: isize,
    alpha: f32,
    beta: f32,
    parallelism: gemm::Parallelism,
) -> bool {
    if m == 0 || n == 0 || k == 0 {
        return false;
    }
    if m.saturating_mul(n).saturating_mul(k) < MIN_WORK.load(Ordering::Relaxed) {
        return false;
    }
    let threads = match parallelism {
        gemm::Parallelism::None => 1,
        gemm::Parallelism::Rayon(0) => rayon::current_num_threads(),
        gemm::Parallelism::Rayon(t) => t,
    };
    PRODUCTS.fetch_add(1, Ordering::Relaxed);
    gemm_bf16(
        m,
        n,
        k,
        ViewMut {
            ptr: dst,
            rs: dst_rs,
            cs: dst_cs,
        },
        read_dst,
        View {
            ptr: lhs,
            rs: lhs_rs,
            cs: lhs_cs,
        },
        View {
            ptr: rhs,
            rs: rhs_rs,
            cs: rhs_cs,
        },
        alpha,
        beta,
        threads,
        amx::micro,
        true,
    );
    true
}

#[cfg(target_arch = "x86_64")]
mod amx {
    use std::arch::asm;
    use std::sync::OnceLock;

    /// Tile configuration: palette 1, all eight tiles 16 rows of 64 bytes.
    #[repr(C, align(64))]
    struct Config([u8; 64]);
    static CONFIG: Config = {
        let mut c = [0u8; 64];
        c[0] = 1;
        let mut t = 0;
        while t < 8 {
            c[16 + 2 * t] = 64;
            c[48 + t] = 16;
            t += 1;
        }
        Config(c)
    };

    /// Check the processor (CPUID leaf 7: AMX-BF16 and AMX-TILE) and ask Linux for the tile
    /// state (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, process-wide), once.
    pub fn enable() -> Result<(), String> {
        static STATE: OnceLock<Result<(), String>> = OnceLock::new();
        STATE
            .get_or_init(|| {
                let leaf = std::arch::x86_64::__cpuid_count(7, 0);
                let bf16 = leaf.edx & (1 << 22) != 0;
                let tile = leaf.edx & (1 << 24) != 0;
                if !(bf16 && tile) {
                    return Err("CPUID reports no AMX-BF16/AMX-TILE".into());
                }
                request_permission()
            })
            .clone()
    }

    #[cfg(target_os = "linux")]
    fn request_permission() -> Result<(), String> {
        const ARCH_REQ_XCOMP_PERM: usize = 0x1023;
        const XFEATURE_XTILEDATA: usize = 18;
        const SYS_ARCH_PRCTL: usize = 158;
        let ret: isize;
        // SAFETY: arch_prctl with these arguments only changes the process's permitted
        // extended state; it reads and writes no user memory.
        unsafe {
            asm!(
                "syscall",
                inlateout("rax") SYS_ARCH_PRCTL as isize => ret,
                in("rdi") ARCH_REQ_XCOMP_PERM,
                in("rsi") XFEATURE_XTILEDATA,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack)
            );
        }
        if ret == 0 {
            Ok(())
        } else {
            Err(format!(
                "the kernel refused the AMX tile state (arch_prctl error {})",
                -ret
            ))
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn request_permission() -> Result<(), String> {
        Err("AMX is used only on Linux".into())
    }

    /// Load the tile configuration on this thread (cheap; every task does it, since rayon may
    /// run it on any thread).
    pub fn configure() {
        // SAFETY: only called after `enable` succeeded (the hook is installed only then).
        unsafe { asm!("ldtilecfg [{0}]", in(reg) CONFIG.0.as_ptr(), options(nostack)) };
    }

    pub fn release() {
        // SAFETY: as `configure`.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }

    /// A 32x32 block in tmm0-3 (2x2 16x16 tiles), A in tmm4-5, B in tmm6-7: four `tdpbf16ps`
    /// per four 1 KiB tile loads, the blocking oneDNN uses for bf16 on AMX.
    pub unsafe fn micro(a: *const u16, b: *const u16, kb: usize, c: *mut f32) {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "2:",
            "tileloadd tmm4, [{a} + {s64}*1]",
            "tileloadd tmm6, [{b} + {s64}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b} + {s64}*1 + 1024]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a} + {s64}*1 + 1024]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {a}, 2048",
            "add {b}, 2048",
            "dec {n}",
            "jnz 2b",
            "tilestored [{c} + {s128}*1], tmm0",
            "tilestored [{c} + {s128}*1 + 64], tmm1",
            "tilestored [{c} + {s128}*1 + 2048], tmm2",
            "tilestored [{c} + {s128}*1 + 2112], tmm3",
            a = inout(reg) a => _,
            b = inout(reg) b => _,
            n = inout(reg) kb => _,
            c = in(reg) c,
            s64 = in(reg) 64usize,
            s128 = in(reg) 128usize,
            options(nostack)
        );
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod amx {
    pub fn enable() -> Result<(), String> {
        Err("AMX exists only on x86-64".into())
    }
    pub fn configure() {}
    pub fn release() {}
    pub unsafe fn micro(a: *const u16, b: *const u16, kb: usize, c: *mut f32) {
        super::micro_emulated(a, b, kb, c)
    }
}

/// One product of [`bench_products`]: `m x k` times `k x n`, each operand stored as it is in a
/// layer's forward (`X W`), its input gradient (`dY W^T`: B transposed) or its weight gradient
/// (`X^T dY`: A transposed).
#[derive(Clone, Copy, Debug)]
pub struct ProductShape {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a_transposed: bool,
    pub b_transposed: bool,
}

/// Median seconds of `iters` products of `shape` with `precision` on rayon's threads (through
/// gemm, as burn calls it; packing included), after one warm-up. Restores the precision that
/// was installed. For `coft bench matmul`.
pub fn bench_product(
    shape: ProductShape,
    precision: MatmulPrecision,
    iters: usize,
) -> Result<f64, MatmulError> {
    let before = matmul_precision();
    set_matmul_precision(precision)?;
    let ProductShape { m, n, k, .. } = shape;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    };
    let a: Vec<f32> = (0..m * k).map(|_| next()).collect();
    let b: Vec<f32> = (0..k * n).map(|_| next()).collect();
    let mut c = vec![0f32; m * n];
    // (cs, rs) of each operand: row-major, or the transpose of a row-major matrix.
    let (a_cs, a_rs) = if shape.a_transposed {
        (m as isize, 1)
    } else {
        (1, k as isize)
    };
    let (b_cs, b_rs) = if shape.b_transposed {
        (k as isize, 1)
    } else {
        (1, n as isize)
    };
    let mut times = Vec::with_capacity(iters);
    for it in 0..=iters {
        let t = std::time::Instant::now();
        // SAFETY: the three buffers hold m*k, k*n and m*n elements, and the strides address
        // exactly them.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                a_cs,
                a_rs,
                b.as_ptr(),
                b_cs,
                b_rs,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(0),
            );
        }
        if it > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    std::hint::black_box(&c);
    set_matmul_precision(before)?;
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng(seed: u64) -> impl FnMut() -> f32 {
        let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
        move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
    }

    #[test]
    fn bf16_rounding_is_round_to_nearest_even_as_half_does() {
        let mut next = rng(1);
        let mut xs: Vec<f32> = (0..10_000).map(|_| next() * 1e3).collect();
        // Exact ties (low half 0x8000) both ways, overflow to infinity, subnormals, signs.
        xs.extend([
            f32::from_bits(0x3f80_8000),
            f32::from_bits(0x3f81_8000),
            f32::MAX,
            -f32::MAX,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1e-40,
            -0.0,
            0.0,
        ]);
        for x in xs {
            assert_eq!(bf16_bits(x), half::bf16::from_f32(x).to_bits(), "{x:e}");
        }
        assert!(bf16_value(bf16_bits(f32::NAN)).is_nan());
    }

    /// dst := alpha * dst + beta * bf16(a) bf16(b), in f64, for the same views.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        (ars, acs): (usize, usize),
        b: &[f32],
        (brs, bcs): (usize, usize),
        dst: &mut [f32],
        (drs, dcs): (usize, usize),
        read_dst: bool,
        alpha: f32,
        beta: f32,
    ) {
        let q = |x: f32| bf16_value(bf16_bits(x)) as f64;
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..k)
                    .map(|kk| q(a[i * ars + kk * acs]) * q(b[kk * brs + j * bcs]))
                    .sum();
                let d = &mut dst[i * drs + j * dcs];
                let v = beta as f64 * s
                    + if read_dst {
                        alpha as f64 * *d as f64
                    } else {
                        0.0
                    };
                *d = v as f32;
            }
        }
    }

    /// Run the driver over several shapes (edges in every dimension), operand layouts
    /// (row-major and transposed), destination layouts and alpha/beta, against `reference`.
    fn check_driver(micro: Micro, tiles: bool) {
        let shapes = [
            (32, 32, 32),
            (33, 47, 70),
            (1, 1, 1),
            (100, 20, 5),
            (64, 130, 96),
            (7, 64, 300),
        ];
        let mut next = rng(7);
        for (case, &(m, n, k)) in shapes.iter().enumerate() {
            // 0-3: each operand row-major or transposed (the packers' fast paths); 4-5: every
            // other element of a twice-as-large buffer, no unit stride (their general path).
            for layout in 0..6 {
                let a_t = layout & 1 == 1;
                let b_t = layout & 2 == 2;
                let strided = layout >= 4;
                let a: Vec<f32> = (0..2 * m * k).map(|_| next()).collect();
                let b: Vec<f32> = (0..2 * k * n).map(|_| next()).collect();
                let (ars, acs) = match (strided, a_t) {
                    (true, _) => (2, 2 * m),
                    (false, true) => (1, m),
                    (false, false) => (k, 1),
                };
                let (brs, bcs) = match (strided, layout == 5) {
                    (true, true) => (2, 2 * k),
                    (true, false) => (2 * n, 2),
                    (false, _) if b_t => (1, k),
                    (false, _) => (n, 1),
                };
                let col_major_dst = case % 2 == 1;
                let (drs, dcs) = if col_major_dst { (1, m) } else { (n, 1) };
                let read_dst = layout == 3;
                let (alpha, beta) = if read_dst { (0.5, -2.0) } else { (0.0, 1.0) };
                let init: Vec<f32> = (0..m * n).map(|_| next()).collect();
                let mut want = init.clone();
                reference(
                    m,
                    n,
                    k,
                    &a,
                    (ars, acs),
                    &b,
                    (brs, bcs),
                    &mut want,
                    (drs, dcs),
                    read_dst,
                    alpha,
                    beta,
                );
                for threads in [1, 2] {
                    let mut got = init.clone();
                    unsafe {
                        gemm_bf16(
                            m,
                            n,
                            k,
                            ViewMut {
                                ptr: got.as_mut_ptr(),
                                rs: drs as isize,
                                cs: dcs as isize,
                            },
                            read_dst,
                            View {
                                ptr: a.as_ptr(),
                                rs: ars as isize,
                                cs: acs as isize,
                            },
                            View {
                                ptr: b.as_ptr(),
                                rs: brs as isize,
                                cs: bcs as isize,
                            },
                            alpha,
                            beta,
                            threads,
                            micro,
                            tiles,
                        );
                    }
                    for (idx, (g, w)) in got.iter().zip(&want).enumerate() {
                        let tol = 1e-5 * (k as f32).sqrt() * (1.0 + w.abs()) * beta.abs().max(1.0);
                        assert!(
                            (g - w).abs() <= tol,
                            "m={m} n={n} k={k} layout={layout} threads={threads} [{idx}]: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn driver_with_emulated_tiles_matches_the_bf16_reference() {
        check_driver(micro_emulated, false);
    }

    #[test]
    fn amx_tiles_match_the_bf16_reference_where_the_processor_has_them() {
        if !amx_available() {
            eprintln!("no AMX here: the emulated driver test covers the packing; tiles untested");
            return;
        }
        check_driver(amx::micro, true);
    }

    #[test]
    fn bf16_products_differ_from_f32_by_bf16_rounding_only() {
        // The size of the change bf16 makes, on unit-variance data with k = 256: a relative
        // error near 2^-9 per operand, averaged down over k terms.
        let (m, n, k) = (40, 40, 256);
        let mut next = rng(3);
        let a: Vec<f32> = (0..m * k).map(|_| next()).collect();
        let b: Vec<f32> = (0..k * n).map(|_| next()).collect();
        let mut got = vec![0f32; m * n];
        unsafe {
            gemm_bf16(
                m,
                n,
                k,
                ViewMut {
                    ptr: got.as_mut_ptr(),
                    rs: n as isize,
                    cs: 1,
                },
                false,
                View {
                    ptr: a.as_ptr(),
                    rs: k as isize,
                    cs: 1,
                },
                View {
                    ptr: b.as_ptr(),
                    rs: n as isize,
                    cs: 1,
                },
                0.0,
                1.0,
                1,
                micro_emulated,
                false,
            );
        }
        let mut err2 = 0f64;
        let mut ref2 = 0f64;
        for i in 0..m {
            for j in 0..n {
                let exact: f64 = (0..k)
                    .map(|kk| a[i * k + kk] as f64 * b[kk * n + j] as f64)
                    .sum();
                err2 += (got[i * n + j] as f64 - exact).powi(2);
                ref2 += exact.powi(2);
            }
        }
        let rel = (err2 / ref2).sqrt();
        assert!(rel > 1e-4 && rel < 6e-3, "relative error {rel}");
    }
}
