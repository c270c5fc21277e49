//! The allocator's settings and its one release call: the crate's only unsafe code.

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

/// Hands the memory glibc's malloc holds free back to the system.
///
/// glibc keeps freed small allocations in its arenas: after a burst the resident set stays
/// at its peak (600 MiB measured) though the agent uses 20 MiB. `malloc_trim(0)` releases
/// the free pages of every arena (the same process: 35 MiB; docs/reliability.md).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes the arenas' locks itself and is safe to call from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}
