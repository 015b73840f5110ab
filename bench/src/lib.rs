//! Side-by-side benchmarks of nemflow against its anchors; see BENCHMARKS.md.

/// Removes the DPDK runtime directories (`/var/run/dpdk/<stem><pid>…`) that earlier runs of a
/// benchmark left when they were killed; a live run's directory (its `config` lock held) stays.
/// Returns how many were removed.
pub fn remove_stale_dpdk_dirs(stem: &str) -> usize {
    let Ok(entries) = std::fs::read_dir("/var/run/dpdk") else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.starts_with(stem))
        .filter(|name| nemflow_driver::dpdk::remove_stale_runtime_dir(name))
        .count()
}
