//! Compiles `kernels/*.cu` into fatbins embedded in the binary and generates the Rust side of
//! `kernels/params.h` with bindgen.
//!
//! nvcc is looked up in `NVCC`, then `CUDA_HOME`/`CUDA_PATH` (`bin/nvcc`), then `PATH`. Without
//! nvcc (or without libclang for bindgen) the crate still builds, with a warning, and the CUDA
//! backend reports that the binary has no kernels; `GEMMA_EMBED_REQUIRE_CUDA=1` makes that a
//! build failure instead. Any register spill reported by `ptxas -v` fails the build, and so does
//! any "Potential Performance Loss" ptxas reports (C7515: wgmma instructions serialized, i.e. the
//! tensor-core pipeline a kernel is built around silently turned off).
//!
//! Outputs in `OUT_DIR`: `<stem>.fatbin` and `<stem>.ptxas.log` per kernel file,
//! `ptxas-summary.txt`, `kernels.rs` (the embedded fatbin table) and `params.rs` (bindgen).
//! When both kernels and bindings were built, the cfg `gemma_cuda_kernels` is set.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Real-hardware targets (SASS) plus PTX for newer chips to JIT from.
const SASS_ARCHS: &[(&str, &str)] = &[
    ("compute_80", "sm_80"),
    ("compute_86", "sm_86"),
    ("compute_89", "sm_89"),
    ("compute_90a", "sm_90a"),
];
const PTX_ARCH: &str = "compute_80";

fn main() {
    println!("cargo::rustc-check-cfg=cfg(gemma_cuda_kernels)");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
    for var in [
        "NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "PATH",
        "GEMMA_EMBED_REQUIRE_CUDA",
        "LIBCLANG_PATH",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    let require = env::var("GEMMA_EMBED_REQUIRE_CUDA").is_ok_and(|v| v == "1");
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let kernel_dir =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets it")).join("kernels");

    match build_kernels(&kernel_dir, &out_dir) {
        Ok(archs) => {
            println!("cargo:rustc-cfg=gemma_cuda_kernels");
            println!("cargo:rustc-env=GEMMA_EMBED_CUDA_ARCHS={archs}");
        }
        Err(Missing(reason)) => {
            if require {
                panic!("GEMMA_EMBED_REQUIRE_CUDA=1 but {reason}");
            }
            println!("cargo:warning=building without CUDA kernels: {reason}, then rebuild");
            println!("cargo:rustc-env=GEMMA_EMBED_CUDA_ARCHS=");
        }
    }
}

/// A tool the kernel build needs is absent; compile errors and spills panic instead.
struct Missing(String);

fn build_kernels(kernel_dir: &Path, out_dir: &Path) -> Result<String, Missing> {
    let nvcc = find_nvcc().ok_or_else(|| {
        Missing(
            "nvcc not found (looked at NVCC, CUDA_HOME, CUDA_PATH and PATH); install it with \
             tools/install-cuda-toolchain.sh and set NVCC to the path it prints"
                .into(),
        )
    })?;
    generate_params_bindings(kernel_dir, out_dir)?;

    let mut sources: Vec<PathBuf> = fs::read_dir(kernel_dir)
        .unwrap_or_else(|e| panic!("{}: {e}", kernel_dir.display()))
        .map(|entry| entry.expect("readable kernels/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    sources.sort();

    // One nvcc per file, all at once; nvcc itself compiles the archs of a file in parallel.
    let results: Vec<(String, Result<String, String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = sources
            .iter()
            .map(|src| scope.spawn(|| compile_one(&nvcc, kernel_dir, src, out_dir)))
            .collect();
        handles
            .into_iter()
            .zip(&sources)
            .map(|(h, src)| (stem(src), h.join().expect("nvcc thread panicked")))
            .collect()
    });

    let mut failures = String::new();
    let mut summary = String::new();
    let mut table = String::from("pub const FATBINS: &[(&str, &[u8])] = &[\n");
    for (name, result) in &results {
        match result {
            Ok(log) => {
                let fatbin = out_dir.join(format!("{name}.fatbin"));
                writeln!(
                    table,
                    "    ({name:?}, include_bytes!({:?})),",
                    fatbin.display().to_string()
                )
                .unwrap();
                summary.push_str(&summarize_ptxas(name, log));
                for spill in spills(log) {
                    writeln!(failures, "{name}.cu: register spill: {spill}").unwrap();
                }
                for loss in log
                    .lines()
                    .filter(|l| l.contains("Potential Performance Loss"))
                {
                    writeln!(failures, "{name}.cu: {}", loss.trim()).unwrap();
                }
            }
            Err(message) => writeln!(failures, "{name}.cu: {message}").unwrap(),
        }
    }
    table.push_str("];\n");
    fs::write(out_dir.join("ptxas-summary.txt"), &summary).expect("write ptxas-summary.txt");
    if !failures.is_empty() {
        panic!(
            "CUDA kernel build failed (ptxas logs in {}):\n{failures}",
            out_dir.display()
        );
    }
    fs::write(out_dir.join("kernels.rs"), table).expect("write kernels.rs");
    Ok(SASS_ARCHS
        .iter()
        .map(|(_, sm)| *sm)
        .collect::<Vec<_>>()
        .join(" "))
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .expect("a .cu file name")
        .to_string_lossy()
        .into_owned()
}

fn find_nvcc() -> Option<PathBuf> {
    let exists = |p: PathBuf| p.is_file().then_some(p);
    if let Some(p) = env::var_os("NVCC").map(PathBuf::from) {
        return exists(p);
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(p) = env::var_os(var).and_then(|d| exists(PathBuf::from(d).join("bin/nvcc"))) {
            return Some(p);
        }
    }
    env::split_paths(&env::var_os("PATH")?).find_map(|d| exists(d.join("nvcc")))
}

/// Compile one `.cu` into `<stem>.fatbin`; returns the ptxas `-v` log (nvcc's stderr).
fn compile_one(
    nvcc: &Path,
    kernel_dir: &Path,
    src: &Path,
    out_dir: &Path,
) -> Result<String, String> {
    let name = stem(src);
    let mut cmd = Command::new(nvcc);
    cmd.arg("-fatbin")
        .args([
            "-O3",
            "-std=c++17",
            "--expt-relaxed-constexpr",
            "-Xptxas=-v",
            "-lineinfo",
        ])
        .arg("-I")
        .arg(kernel_dir);
    for (compute, sm) in SASS_ARCHS {
        cmd.arg(format!("-gencode=arch={compute},code={sm}"));
    }
    cmd.arg(format!("-gencode=arch={PTX_ARCH},code={PTX_ARCH}"))
        .arg("-o")
        .arg(out_dir.join(format!("{name}.fatbin")))
        .arg(src);
    let output = cmd
        .output()
        .map_err(|e| format!("cannot run {}: {e}", nvcc.display()))?;
    let log = String::from_utf8_lossy(&output.stderr).into_owned();
    fs::write(out_dir.join(format!("{name}.ptxas.log")), &log).expect("write ptxas log");
    if !output.status.success() {
        return Err(format!("nvcc failed ({}):\n{log}", output.status));
    }
    Ok(log)
}

/// `ptxas info    : Function properties for X` blocks report
/// `N bytes stack frame, S bytes spill stores, L bytes spill loads`; any S or L > 0 is a spill.
fn spills(log: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut function = "";
    let mut arch = "";
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            arch = rest
                .split("for '")
                .nth(1)
                .map_or("", |a| a.trim_end_matches('\''));
        }
        if let Some(rest) = line.split("Function properties for ").nth(1) {
            function = rest.trim();
        }
        if line.contains("spill stores") {
            let numbers: Vec<u64> = line
                .split(',')
                .filter_map(|part| part.split_whitespace().next()?.parse().ok())
                .collect();
            if numbers.len() == 3 && (numbers[1] > 0 || numbers[2] > 0) {
                found.push(format!("{function} ({arch}): {}", line.trim()));
            }
        }
    }
    found
}

/// One line per (kernel, arch): `file  arch  kernel  registers  smem`.
fn summarize_ptxas(file: &str, log: &str) -> String {
    let mut out = String::new();
    let mut arch = "";
    let mut function = String::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            function = rest.split('\'').next().unwrap_or("").to_string();
            arch = rest
                .split("for '")
                .nth(1)
                .map_or("", |a| a.trim_end_matches('\''));
        }
        if line.contains("Used ") && line.contains("registers") {
            writeln!(
                out,
                "{file}\t{arch}\t{function}\t{}",
                line.split(": ").last().unwrap_or("").trim()
            )
            .unwrap();
        }
    }
    out
}

/// bindgen over `kernels/params.h` (plain C view: `bf16_t` is `uint16_t`). bindgen needs
/// libclang at build time; a missing libclang is reported like a missing nvcc.
fn generate_params_bindings(kernel_dir: &Path, out_dir: &Path) -> Result<(), Missing> {
    let header = kernel_dir.join("params.h");
    let generated = std::panic::catch_unwind(|| {
        bindgen::Builder::default()
            .header(header.display().to_string())
            .allowlist_type(".*Params")
            .allowlist_type("GemmTensorMaps")
            .allowlist_type("AttentionTensorMaps")
            .allowlist_var("POOL_BLOCK")
            .derive_default(true)
            .derive_debug(true)
            .layout_tests(false)
            .generate()
    });
    match generated {
        Ok(Ok(bindings)) => {
            bindings
                .write_to_file(out_dir.join("params.rs"))
                .expect("write params.rs");
            Ok(())
        }
        Ok(Err(e)) => panic!("bindgen failed on {}: {e}", header.display()),
        Err(_) => Err(Missing(
            "libclang (needed by bindgen for kernels/params.h) could not be loaded; install \
             libclang-dev or set LIBCLANG_PATH"
                .into(),
        )),
    }
}
