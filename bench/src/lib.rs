//! Side-by-side benchmarks of nemflow against its anchors; see BENCHMARKS.md.
