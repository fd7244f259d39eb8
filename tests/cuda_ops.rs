//! Every CUDA kernel against its CPU twin on the device (see `backend::cuda::check`). Skips,
//! saying so, when the binary has no kernels or the machine has no CUDA device.

use std::io::Write;

use gemma_embed::backend::cuda;

/// The device description, or `None` after printing why the test is skipped.
fn device() -> Option<String> {
    match cuda::probe() {
        Ok(info) => Some(info.description),
        Err(e) => {
            // Written to stderr directly, past the test harness's output capture.
            let _ = writeln!(std::io::stderr(), "SKIPPED: no CUDA device ({e})");
            None
        }
    }
}

#[test]
fn every_kernel_matches_its_cpu_twin() {
    let Some(description) = device() else { return };
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let checks = cuda::run_kernel_checks(seed)
        .expect("kernel checks run")
        .checks;
    let mut table = Vec::new();
    cuda::print_table(&checks, &mut table).expect("format table");
    eprintln!(
        "{description}, seed {seed}\n{}",
        String::from_utf8_lossy(&table)
    );
    assert!(!checks.is_empty());
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.name.as_str())
        .collect();
    assert!(
        failed.is_empty(),
        "kernel checks failed (seed {seed}): {failed:?}"
    );
}
