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
    let mut families_done = 0;
    let checks = cuda::run_kernel_checks(seed, &[], &mut |_| {
        families_done += 1;
        Ok(())
    })
    .expect("kernel checks run")
    .checks;
    assert_eq!(families_done, cuda::CheckFamily::ALL.len());
    for c in &checks {
        assert!(cuda::CheckFamily::parse(&c.family).is_ok(), "{c:?}");
    }
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

/// The CUDA-only subcommands on a machine without a usable device (or a binary without
/// kernels) stop with one clear error line, not a panic. Skipped where a device is present.
#[test]
fn cuda_subcommands_without_a_device_fail_with_a_clear_message() {
    if let Ok(info) = cuda::probe() {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: a CUDA device is present ({})",
            info.description
        );
        return;
    }
    let tiny = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny");
    for args in [
        vec!["profile", "--model", tiny, "--lengths", "16"],
        vec!["check-kernels"],
        vec!["bench", "--model", tiny, "--backend", "cuda"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_gemma-embed"))
            .args(&args)
            .output()
            .expect("run gemma-embed");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        let last = stderr.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("error: ") && last.contains("CUDA") && !stderr.contains("panicked"),
            "{args:?}: {stderr}"
        );
    }
}

/// `check-kernels --list-families` needs no device: it prints the families in the order they
/// run, the names `--family` accepts.
#[test]
fn check_kernels_lists_its_families() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gemma-embed"))
        .args(["check-kernels", "--list-families"])
        .output()
        .expect("run gemma-embed");
    assert!(out.status.success(), "{out:?}");
    let listed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let names: Vec<&str> = cuda::CheckFamily::ALL.iter().map(|f| f.name()).collect();
    assert_eq!(listed, names);
    let mut unique = listed.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), listed.len(), "{listed:?}");
}
