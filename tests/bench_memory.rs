//! The host peak-RSS probe of `gemma-embed bench`, alone in its process (other tests' allocations
//! would move the process's peak).

use gemma_embed::bench::{host_peak_rss, reset_host_peak};

#[test]
fn host_peak_follows_a_large_allocation_and_resets() {
    if !reset_host_peak() {
        eprintln!("SKIPPED: /proc/self/clear_refs is not writable here");
        return;
    }
    let before = host_peak_rss().expect("procfs");
    let mut block = vec![0u8; 256 << 20];
    // Touch every page so that it becomes resident.
    for i in (0..block.len()).step_by(4096) {
        block[i] = 1;
    }
    let grown = host_peak_rss().expect("procfs");
    assert!(grown >= before + (200 << 20), "{before} -> {grown}");
    drop(std::hint::black_box(block));
    assert!(reset_host_peak());
    let after = host_peak_rss().expect("procfs");
    assert!(after + (200 << 20) <= grown, "{grown} -> {after}");
}
