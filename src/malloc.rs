//! The allocator's one setting, made before any thread starts: the crate's only unsafe code.

/// Caps glibc's malloc at two arenas before any thread starts.
///
/// glibc gives each thread that allocates its own arena (up to 8 per core) and keeps their
/// freed memory: with batches handed between runtime and blocking threads that is tens of
/// MiB of peak RSS for a few percent of CPU (docs/performance.md). `MALLOC_ARENA_MAX` in the
/// environment still wins.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a tunable; it is called before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}
