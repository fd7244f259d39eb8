//! Results of the on-device kernel checks (`gemma-embed check-kernels`): accuracy against a
//! CPU reference and timing, printed as a table or written as JSON.

use std::io::Write;
use std::path::Path;

use serde::Serialize;

use crate::{Error, Result};

/// Every check of one `check-kernels` run, with the device they ran on.
pub struct KernelChecks {
    /// `"<GPU name> (sm_XY)"`.
    pub device: String,
    pub checks: Vec<KernelCheck>,
}

#[derive(Clone, Debug, Serialize)]
pub struct KernelCheck {
    /// Kernel (or cuBLAS GEMM) name.
    pub name: String,
    /// The checked problem, e.g. `tokens=1031 hidden=768`.
    pub case: String,
    pub max_abs_err: f64,
    /// `||out - ref|| / ||ref||`.
    pub rel_l2_err: f64,
    /// Outputs left NaN/poisoned or non-finite where the reference is finite.
    pub bad_values: usize,
    pub max_abs_tol: f64,
    pub rel_l2_tol: f64,
    pub passed: bool,
    pub timing: Option<Timing>,
    /// Why the check could not run (launch failure, device fault), if it did not.
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Timing {
    /// The timed problem, usually larger than the checked one.
    pub case: String,
    pub median_us: f64,
    pub gbytes_per_s: f64,
    pub tflops: f64,
}

impl KernelCheck {
    /// Compare `out` with `reference` elementwise.
    pub fn compare(
        name: &str,
        case: String,
        out: &[f32],
        reference: &[f32],
        (max_abs_tol, rel_l2_tol): (f64, f64),
    ) -> Self {
        let mut max_abs_err = 0.0f64;
        let mut diff_sq = 0.0f64;
        let mut ref_sq = 0.0f64;
        let mut bad_values = out.len().abs_diff(reference.len());
        for (&o, &r) in out.iter().zip(reference) {
            if !o.is_finite() && r.is_finite() {
                bad_values += 1;
                continue;
            }
            let diff = f64::from(o) - f64::from(r);
            max_abs_err = max_abs_err.max(diff.abs());
            diff_sq += diff * diff;
            ref_sq += f64::from(r) * f64::from(r);
        }
        let rel_l2_err = if ref_sq > 0.0 {
            (diff_sq / ref_sq).sqrt()
        } else {
            diff_sq.sqrt()
        };
        let passed = bad_values == 0 && max_abs_err <= max_abs_tol && rel_l2_err <= rel_l2_tol;
        Self {
            name: name.to_string(),
            case,
            max_abs_err,
            rel_l2_err,
            bad_values,
            max_abs_tol,
            rel_l2_tol,
            passed,
            timing: None,
            error: None,
        }
    }

    /// A check that could not run at all.
    pub fn error(name: &str, message: String) -> Self {
        Self {
            name: name.to_string(),
            case: "did not run".into(),
            max_abs_err: f64::NAN,
            rel_l2_err: f64::NAN,
            bad_values: 0,
            max_abs_tol: 0.0,
            rel_l2_tol: 0.0,
            passed: false,
            timing: None,
            error: Some(message),
        }
    }

    pub fn with_timing(mut self, timing: Timing) -> Self {
        self.timing = Some(timing);
        self
    }
}

pub fn print_table(checks: &[KernelCheck], out: &mut impl Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<22} {:<34} {:>10} {:>10} {:>6} {:>10} {:>10} {:>5} {:>10} {:>8} {:>8}",
        "kernel",
        "checked case",
        "max abs",
        "rel L2",
        "bad",
        "abs tol",
        "L2 tol",
        "ok",
        "median us",
        "GB/s",
        "TFLOP/s"
    )?;
    for c in checks {
        let (us, gbs, tf) = c
            .timing
            .as_ref()
            .map_or(("-".into(), "-".into(), "-".into()), |t| {
                (
                    format!("{:.1}", t.median_us),
                    format!("{:.0}", t.gbytes_per_s),
                    format!("{:.1}", t.tflops),
                )
            });
        writeln!(
            out,
            "{:<22} {:<34} {:>10.3e} {:>10.3e} {:>6} {:>10.1e} {:>10.1e} {:>5} {:>10} {:>8} {:>8}",
            c.name,
            c.case,
            c.max_abs_err,
            c.rel_l2_err,
            c.bad_values,
            c.max_abs_tol,
            c.rel_l2_tol,
            if c.passed { "PASS" } else { "FAIL" },
            us,
            gbs,
            tf
        )?;
        if let Some(e) = &c.error {
            writeln!(out, "{:<22}   ERROR: {e}", "")?;
        }
        if let Some(t) = &c.timing {
            writeln!(out, "{:<22}   timed at {}", "", t.case)?;
        }
    }
    Ok(())
}

pub fn write_json(checks: &[KernelCheck], path: &Path) -> Result<()> {
    let io_err = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let text = serde_json::to_string_pretty(checks).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::write(path, text).map_err(io_err)
}
