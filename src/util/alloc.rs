//! Allocator tuning. The CPU backend allocates and frees large activation buffers every
//! op; with glibc's defaults each one above the mmap threshold is mapped and unmapped
//! (page faults and zeroing on every op). Raising the thresholds keeps freed blocks in
//! the heap for reuse.

/// Call once at start-up, before threads start.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        const M_ARENA_MAX: i32 = -8;
        if std::env::var_os("COFT_NO_MALLOPT").is_some() {
            return;
        }
        // SAFETY: mallopt only changes allocator parameters; called before other threads.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 1 << 30);
            mallopt(M_TRIM_THRESHOLD, 1 << 30);
            mallopt(M_ARENA_MAX, 4);
        }
    }
}
