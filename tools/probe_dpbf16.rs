//! Peak rates of AVX512_BF16's `vdpbf16ps` against AVX-512 f32 FMA on one core: can bf16
//! products pay on a processor with AVX512_BF16 but no AMX (issue 18)? Each loop keeps 28
//! independent accumulators, so both are throughput-bound, not latency-bound.
//!
//!     rustc -O -C target-cpu=native tools/probe_dpbf16.rs -o /tmp/probe_dpbf16 && /tmp/probe_dpbf16
//!
//! On the 2-core Intel Xeon without AMX (AVX512_BF16, AVX512_FP16; 260 MiB L3), 2026-12-06:
//! bf16 76-79 GFLOP/s, f32 151-165 GFLOP/s, three runs: `vdpbf16ps` issues at half the FMA
//! rate here, so a bf16 kernel on it cannot beat gemm's f32 one and `--matmul bf16` stays
//! AMX-only.
use std::arch::x86_64::*;
use std::time::Instant;
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn bf(n: usize) -> f32 {
    let mut acc = [_mm512_setzero_ps(); 28];
    let a = _mm512_set1_epi32(0x3f803f80u32 as i32);
    let b = _mm512_set1_epi32(0x3f803f80u32 as i32);
    let a: __m512bh = std::mem::transmute(a);
    let b: __m512bh = std::mem::transmute(b);
    for _ in 0..n {
        for j in 0..28 { acc[j] = _mm512_dpbf16_ps(acc[j], a, b); }
    }
    let mut s = _mm512_setzero_ps();
    for j in 0..28 { s = _mm512_add_ps(s, acc[j]); }
    _mm512_reduce_add_ps(s)
}
#[target_feature(enable = "avx512f")]
unsafe fn ff(n: usize) -> f32 {
    let mut acc = [_mm512_setzero_ps(); 28];
    let a = _mm512_set1_ps(1.0001);
    let b = _mm512_set1_ps(0.9999);
    for _ in 0..n {
        for j in 0..28 { acc[j] = _mm512_fmadd_ps(acc[j], a, b); }
    }
    let mut s = _mm512_setzero_ps();
    for j in 0..28 { s = _mm512_add_ps(s, acc[j]); }
    _mm512_reduce_add_ps(s)
}
fn main() {
    let n = 50_000_000;
    for _ in 0..3 {
        let t = Instant::now(); let x = unsafe { bf(n) }; let tb = t.elapsed().as_secs_f64();
        let t = Instant::now(); let y = unsafe { ff(n) }; let tf = t.elapsed().as_secs_f64();
        // flops: bf: 16 acc * 16 lanes * 2 pairs * 2 ; f32: 16*16*2
        println!("bf16 {:.1} GFLOP/s  f32 {:.1} GFLOP/s  ({x} {y})", (n*28*64) as f64/tb/1e9, (n*28*32) as f64/tf/1e9);
    }
}
