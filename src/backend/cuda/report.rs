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

/// A family of `gemma-embed check-kernels`. [`CheckFamily::ALL`] is the order they run in: the
/// kernels the engine has used on GPUs first, then the newer ones (a faulting kernel poisons the
/// context for every check after it): attention, then those not yet run on a GPU.
/// `GateUpGeglu`, `QkvProj` and `ProjResidualNorm` time the cuBLAS baseline before the fused
/// kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckFamily {
    L2ReadProbe,
    EmbedTokens,
    ResidualNorm,
    QkvPost,
    Geglu,
    PoolEmbeddings,
    Gemm,
    Attention,
    ResidualNormBf16Branch,
    GateUpGeglu,
    AttentionFlashWgmma,
    QkvProj,
    ProjResidualNorm,
    AttentionFlashTma,
    AttentionFlashTmaFree,
}

impl CheckFamily {
    pub const ALL: [Self; 15] = [
        Self::L2ReadProbe,
        Self::EmbedTokens,
        Self::ResidualNorm,
        Self::QkvPost,
        Self::Geglu,
        Self::PoolEmbeddings,
        Self::Gemm,
        Self::Attention,
        Self::ResidualNormBf16Branch,
        Self::GateUpGeglu,
        Self::AttentionFlashWgmma,
        Self::QkvProj,
        Self::ProjResidualNorm,
        Self::AttentionFlashTma,
        Self::AttentionFlashTmaFree,
    ];

    /// The name `--family` takes and the JSON's `family` field carries.
    pub fn name(self) -> &'static str {
        match self {
            Self::L2ReadProbe => "l2_read_probe",
            Self::EmbedTokens => "embed_tokens",
            Self::ResidualNorm => "residual_norm",
            Self::QkvPost => "qkv_post",
            Self::Geglu => "geglu",
            Self::PoolEmbeddings => "pool_embeddings",
            Self::Gemm => "gemm",
            Self::Attention => "attention",
            Self::ResidualNormBf16Branch => "residual_norm_bf16_branch",
            Self::GateUpGeglu => "gate_up_geglu",
            Self::AttentionFlashWgmma => "attention_flash_wgmma",
            Self::QkvProj => "qkv_proj",
            Self::ProjResidualNorm => "proj_residual_norm",
            Self::AttentionFlashTma => "attention_flash_tma",
            Self::AttentionFlashTmaFree => "attention_flash_tma_free",
        }
    }

    /// The family called `name`, or an error listing them all.
    pub fn parse(name: &str) -> crate::Result<Self> {
        Self::ALL
            .into_iter()
            .find(|f| f.name() == name)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|f| f.name()).collect();
                crate::Error::Cuda(format!(
                    "no kernel check family `{name}`; the families are {}",
                    names.join(", ")
                ))
            })
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct KernelCheck {
    /// The name of the [`CheckFamily`] that ran it.
    pub family: String,
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
    /// Where a matrix output is wrong ([`KernelCheck::compare_matrix`]), when it is.
    pub mismatch: Option<MismatchMap>,
}

/// Where the wrong elements of a `[rows, cols]` output sit: enough to tell a tile-layout bug
/// (one half of every 16-row mma tile, every other 8-column fragment, one CTA's 64-column
/// block) from a numeric one after a single GPU run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MismatchMap {
    /// Elements off by more than the max-abs tolerance, or not finite.
    pub wrong: usize,
    pub total: usize,
    pub cols: usize,
    /// The first wrong element (row, column) in row-major order, and the worst one.
    pub first: (usize, usize),
    pub worst: (usize, usize),
    /// Inclusive ranges of the wrong rows and columns.
    pub rows_span: (usize, usize),
    pub cols_span: (usize, usize),
    /// Residues `row % 16` and `col % 8` that hold a wrong element (mma fragment positions),
    /// and the 64-column blocks that do.
    pub row_residues_16: Vec<usize>,
    pub col_residues_8: Vec<usize>,
    pub col_blocks_64: Vec<usize>,
}

impl MismatchMap {
    /// `None` when every element is within `max_abs_tol` (and finite where the reference is).
    pub fn of(out: &[f32], reference: &[f32], cols: usize, max_abs_tol: f64) -> Option<Self> {
        let cols = cols.max(1);
        let mut map: Option<Self> = None;
        let mut worst_err = -1.0f64;
        let mut row_mask = 0u16;
        let mut col_mask = 0u8;
        let mut blocks = std::collections::BTreeSet::new();
        for (index, (&o, &r)) in out.iter().zip(reference).enumerate() {
            let err = (f64::from(o) - f64::from(r)).abs();
            let bad = (!o.is_finite() && r.is_finite()) || err > max_abs_tol;
            if !bad {
                continue;
            }
            let at = (index / cols, index % cols);
            let err = if err.is_nan() { f64::INFINITY } else { err };
            let m = map.get_or_insert(Self {
                wrong: 0,
                total: out.len(),
                cols,
                first: at,
                worst: at,
                rows_span: (at.0, at.0),
                cols_span: (at.1, at.1),
                row_residues_16: Vec::new(),
                col_residues_8: Vec::new(),
                col_blocks_64: Vec::new(),
            });
            m.wrong += 1;
            if err > worst_err {
                worst_err = err;
                m.worst = at;
            }
            m.rows_span.1 = at.0;
            m.cols_span = (m.cols_span.0.min(at.1), m.cols_span.1.max(at.1));
            row_mask |= 1 << (at.0 % 16);
            col_mask |= 1 << (at.1 % 8);
            blocks.insert(at.1 / 64);
        }
        let set_bits =
            |mask: u32, width: usize| (0..width).filter(|b| mask >> b & 1 == 1).collect();
        map.map(|mut m| {
            m.row_residues_16 = set_bits(u32::from(row_mask), 16);
            m.col_residues_8 = set_bits(u32::from(col_mask), 8);
            m.col_blocks_64 = blocks.into_iter().collect();
            m
        })
    }

    /// One line, e.g. `1024 of 295936 wrong, first (0, 8), worst (3, 9); rows 0..=256 (mod 16:
    /// 0 1 2 3 4 5 6 7), cols 8..=1151 (mod 8: all; 64-blocks: 0..=17, 18 of them)`.
    pub fn describe(&self) -> String {
        let list = |v: &[usize], width: usize| {
            if v.len() == width {
                "all".to_string()
            } else {
                v.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        };
        let blocks = match self.col_blocks_64.as_slice() {
            [] => String::new(),
            all if all.len() == self.cols.div_ceil(64) => "all".to_string(),
            [one] => one.to_string(),
            many if many.len() > 8 => format!(
                "{}..={}, {} of them",
                many[0],
                many[many.len() - 1],
                many.len()
            ),
            few => list(few, usize::MAX),
        };
        format!(
            "{} of {} wrong, first {:?}, worst {:?}; rows {}..={} (mod 16: {}), cols {}..={} \
             (mod 8: {}; 64-blocks: {blocks})",
            self.wrong,
            self.total,
            self.first,
            self.worst,
            self.rows_span.0,
            self.rows_span.1,
            list(&self.row_residues_16, 16),
            self.cols_span.0,
            self.cols_span.1,
            list(&self.col_residues_8, 8),
        )
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Timing {
    /// The timed problem, usually larger than the checked one.
    pub case: String,
    pub median_us: f64,
    pub gbytes_per_s: f64,
    pub tflops: f64,
    /// Tiled GEMM kernels: the operand bytes their CTAs load from L2 (each x and weight tile
    /// once per CTA that multiplies it) per second, to hold against the `l2_read_probe` rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l2_gbytes_per_s: Option<f64>,
}

impl Timing {
    /// The same timing with `bytes` of operand loads from L2 ([`Timing::l2_gbytes_per_s`]).
    pub fn with_l2_bytes(mut self, bytes: f64) -> Self {
        self.l2_gbytes_per_s = Some(bytes / (self.median_us * 1e-6) / 1e9);
        self
    }
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
            family: String::new(),
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
            mismatch: None,
        }
    }

    /// [`KernelCheck::compare`] for a row-major `[rows, cols]` output, which on failure also
    /// maps where the wrong elements are ([`MismatchMap`]).
    pub fn compare_matrix(
        name: &str,
        case: String,
        out: &[f32],
        reference: &[f32],
        cols: usize,
        tolerances: (f64, f64),
    ) -> Self {
        let mut check = Self::compare(name, case, out, reference, tolerances);
        if !check.passed {
            check.mismatch = MismatchMap::of(out, reference, cols, tolerances.0);
        }
        check
    }

    /// A check that could not run at all.
    pub fn error(name: &str, message: String) -> Self {
        Self {
            family: String::new(),
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
            mismatch: None,
        }
    }

    pub fn with_timing(mut self, timing: Timing) -> Self {
        self.timing = Some(timing);
        self
    }

    /// The same check, marked as run by `family`.
    pub fn in_family(mut self, family: &str) -> Self {
        self.family = family.to_string();
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
        if let Some(m) = &c.mismatch {
            writeln!(out, "{:<22}   WHERE: {}", "", m.describe())?;
        }
        if let Some(t) = &c.timing {
            match t.l2_gbytes_per_s {
                Some(l2) => writeln!(
                    out,
                    "{:<22}   timed at {}; operand loads from L2 {l2:.0} GB/s",
                    "", t.case
                )?,
                None => writeln!(out, "{:<22}   timed at {}", "", t.case)?,
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_parses_from_its_name_and_an_unknown_one_lists_them() {
        for family in CheckFamily::ALL {
            assert_eq!(CheckFamily::parse(family.name()).unwrap(), family);
        }
        let err = CheckFamily::parse("qkv").unwrap_err().to_string();
        assert!(
            err.contains("`qkv`") && err.contains("l2_read_probe, embed_tokens"),
            "{err}"
        );
    }

    /// A `[rows, cols]` reference of distinct values and a copy with `wrong` cells broken.
    fn broken(rows: usize, cols: usize, wrong: &[(usize, usize, f32)]) -> (Vec<f32>, Vec<f32>) {
        let reference: Vec<f32> = (0..rows * cols).map(|i| (i % 97) as f32 * 0.01).collect();
        let mut out = reference.clone();
        for &(r, c, v) in wrong {
            out[r * cols + c] = v;
        }
        (out, reference)
    }

    #[test]
    fn a_correct_matrix_has_no_mismatch_map() {
        let (out, reference) = broken(40, 200, &[]);
        let check =
            KernelCheck::compare_matrix("k", "c".into(), &out, &reference, 200, (1e-3, 1e-3));
        assert!(check.passed && check.mismatch.is_none());
    }

    #[test]
    fn the_map_names_fragment_rows_columns_and_blocks_of_the_wrong_cells() {
        // Rows 8..15 of the second 16-row tile, columns 3 and 11 of the third 64-column block,
        // one NaN at the far corner: an mma fragment-half bug and an unwritten element.
        let mut wrong: Vec<(usize, usize, f32)> = (24..32)
            .flat_map(|r| [(r, 128 + 3, 5.0), (r, 128 + 11, 5.0)])
            .collect();
        wrong.push((39, 199, f32::NAN));
        wrong.push((30, 131, 50.0));
        let (out, reference) = broken(40, 200, &wrong);
        let check =
            KernelCheck::compare_matrix("k", "c".into(), &out, &reference, 200, (1e-3, 1e-3));
        assert!(!check.passed);
        let m = check.mismatch.expect("a failing check maps its mismatches");
        assert_eq!(m.wrong, 17);
        assert_eq!(m.total, 8000);
        assert_eq!(m.first, (24, 131));
        assert_eq!(m.worst, (39, 199), "a NaN is the worst");
        assert_eq!(m.rows_span, (24, 39));
        assert_eq!(m.cols_span, (131, 199));
        assert_eq!(m.row_residues_16, vec![7, 8, 9, 10, 11, 12, 13, 14, 15]);
        assert_eq!(m.col_residues_8, vec![3, 7]);
        assert_eq!(m.col_blocks_64, vec![2, 3]);
        assert_eq!(
            m.describe(),
            "17 of 8000 wrong, first (24, 131), worst (39, 199); rows 24..=39 (mod 16: 7 8 9 \
             10 11 12 13 14 15), cols 131..=199 (mod 8: 3 7; 64-blocks: 2 3)"
        );
    }

    #[test]
    fn the_map_is_printed_under_a_failing_check() {
        let (out, reference) = broken(16, 64, &[(0, 0, 9.0)]);
        let check = KernelCheck::compare_matrix("k", "c".into(), &out, &reference, 64, (1e-3, 1.0));
        let mut table = Vec::new();
        print_table(&[check], &mut table).unwrap();
        let table = String::from_utf8(table).unwrap();
        assert!(
            table.contains("WHERE: 1 of 1024 wrong, first (0, 0), worst (0, 0); rows 0..=0 (mod 16: 0), cols 0..=0 (mod 8: 0; 64-blocks: all)"),
            "{table}"
        );
    }
}
