//! The CUDA backend's kernel choices, read once from the environment ([`CudaOptions`]).
//!
//! Each choice has a default per architecture, the option the GPU check found correct and
//! fastest there (docs/gpu-report.md); the others are candidates `tools/gpu-check.sh` checks and
//! times next to it.

use super::attention::AttentionKernel;
use super::mlp::MlpKernel;
use super::qkv::QkvKernel;
use super::DeviceInfo;
use crate::{Error, Result};

/// A kernel choice read from one environment variable: the device's default when it is unset
/// ([`KernelChoice::default_on`]), the value it names otherwise, an error listing the names for
/// anything else.
pub trait KernelChoice: Copy + PartialEq + 'static {
    const VAR: &'static str;
    /// Every option by name; the first is the default off sm_90.
    const CHOICES: &'static [(&'static str, Self)];
    /// The default on sm_90 devices: the option measured correct and fastest on H100/H200
    /// (docs/gpu-report.md).
    const SM90_DEFAULT: Self;
    /// The choices whose kernels have sm_90a code only (wgmma, clusters): other architectures'
    /// builds of them trap.
    const SM90_ONLY: &'static [Self];

    /// Whether a device of this compute capability runs the choice.
    fn runs_on(self, compute_capability: (i32, i32)) -> bool {
        !Self::SM90_ONLY.contains(&self) || compute_capability == (9, 0)
    }

    /// [`KernelChoice::runs_on`] as an error naming `kernel`, the device and the way out.
    fn require_device(self, device: &DeviceInfo, kernel: &str) -> Result<()> {
        if self.runs_on(device.compute_capability) {
            return Ok(());
        }
        Err(Error::Cuda(format!(
            "{kernel} runs on sm_90 devices only; {} is not one (unset {})",
            device.description,
            Self::VAR
        )))
    }

    /// The name the variable gives this choice.
    fn choice_name(self) -> &'static str {
        Self::CHOICES
            .iter()
            .find(|&&(_, choice)| choice == self)
            .map(|&(name, _)| name)
            .expect("CHOICES lists every value")
    }

    /// Every choice, the off-sm_90 default first.
    fn all() -> impl Iterator<Item = Self> {
        Self::CHOICES.iter().map(|&(_, choice)| choice)
    }

    /// What an unset variable selects on a device of this compute capability.
    fn default_on(compute_capability: (i32, i32)) -> Self {
        if compute_capability == (9, 0) {
            Self::SM90_DEFAULT
        } else {
            Self::CHOICES[0].1
        }
    }

    /// The variable's choice, or the default on a device of this compute capability.
    fn from_env(compute_capability: (i32, i32)) -> Result<Self> {
        match std::env::var(Self::VAR) {
            Ok(value) => Self::parse(&value),
            Err(_) => Ok(Self::default_on(compute_capability)),
        }
    }

    /// The option `value` names.
    fn parse(value: &str) -> Result<Self> {
        match Self::CHOICES.iter().find(|(name, _)| *name == value) {
            Some(&(_, choice)) => Ok(choice),
            None => {
                let names: Vec<String> = Self::CHOICES
                    .iter()
                    .map(|(name, _)| format!("`{name}`"))
                    .collect();
                Err(Error::Cuda(format!(
                    "{} must be one of {}, got `{value}`",
                    Self::VAR,
                    names.join(", ")
                )))
            }
        }
    }
}

/// How the O and down projections hand their output (the branch) to the residual norm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BranchStorage {
    /// cuBLAS writes f32; `residual_norm` reads it (the default off sm_90).
    F32,
    /// cuBLAS rounds to bf16; `residual_norm_bf16_branch` reads half the bytes (the default on
    /// sm_90: 5-8 % faster end to end on an H200). The worst cosine against
    /// sentence-transformers drops from 0.999924 to 0.999898 in the host model
    /// (`tests/cuda_numerics.rs`); on the H200 it was 0.999907 against 0.999906 with f32.
    Bf16,
    /// Never stored: `proj_residual_norm_wgmma` runs the norm in the projection's epilogue,
    /// on the f32 accumulators (sm_90 devices only; [`super::residual`]).
    Fused,
    /// Never stored, as [`BranchStorage::Fused`], in `proj_residual_norm_tma`: its stages filled
    /// by TMA from a producer warpgroup (sm_90 devices only).
    Tma,
}

/// `GEMMA_EMBED_BRANCH=f32`, `bf16`, `fused` or `tma`; unset: bf16 on sm_90, f32 elsewhere.
impl KernelChoice for BranchStorage {
    const VAR: &'static str = "GEMMA_EMBED_BRANCH";
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("f32", Self::F32),
        ("bf16", Self::Bf16),
        ("fused", Self::Fused),
        ("tma", Self::Tma),
    ];
    const SM90_DEFAULT: Self = Self::Bf16;
    const SM90_ONLY: &'static [Self] = &[Self::Fused, Self::Tma];
}

impl BranchStorage {
    /// The kernel that adds the branch to the residual stream.
    pub fn residual_norm_kernel(self) -> &'static str {
        match self {
            Self::F32 => "residual_norm",
            Self::Bf16 => "residual_norm_bf16_branch",
            Self::Fused => super::residual::KERNEL,
            Self::Tma => super::residual::TMA_KERNEL,
        }
    }
}

/// Every kernel choice of the CUDA backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CudaOptions {
    pub qkv: QkvKernel,
    pub attention: AttentionKernel,
    pub mlp: MlpKernel,
    pub branch: BranchStorage,
}

impl CudaOptions {
    /// What the environment selects on a device of this compute capability when nothing is
    /// set.
    pub fn default_on(compute_capability: (i32, i32)) -> Self {
        Self {
            qkv: QkvKernel::default_on(compute_capability),
            attention: AttentionKernel::default_on(compute_capability),
            mlp: MlpKernel::default_on(compute_capability),
            branch: BranchStorage::default_on(compute_capability),
        }
    }

    /// `GEMMA_EMBED_QKV`, `GEMMA_EMBED_ATTENTION`, `GEMMA_EMBED_MLP` and `GEMMA_EMBED_BRANCH`,
    /// each defaulting as on a device of this compute capability.
    pub fn from_env(compute_capability: (i32, i32)) -> Result<Self> {
        Ok(Self {
            qkv: QkvKernel::from_env(compute_capability)?,
            attention: AttentionKernel::from_env(compute_capability)?,
            mlp: MlpKernel::from_env(compute_capability)?,
            branch: BranchStorage::from_env(compute_capability)?,
        })
    }

    /// E.g. `cublas+qkv_post, attention_flash, cublas+geglu, f32 branch`, for logs and test
    /// messages: the choices in the order the layer runs them.
    pub fn describe(&self) -> String {
        format!(
            "{}, {}, {}, {} branch",
            self.qkv.name(),
            self.attention.name(),
            self.mlp.name(),
            self.branch.choice_name()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unset_variable_picks_the_first_choice_and_a_wrong_one_lists_them() {
        #[derive(Clone, Copy, Debug, PartialEq)]
        struct Choice(u8);
        impl KernelChoice for Choice {
            const VAR: &'static str = "VAR";
            const CHOICES: &'static [(&'static str, Self)] =
                &[("a", Choice(1)), ("b-c", Choice(2))];
            const SM90_DEFAULT: Self = Choice(2);
            const SM90_ONLY: &'static [Self] = &[Choice(2)];
        }
        assert_eq!(Choice::default_on((8, 0)), Choice(1));
        assert_eq!(Choice::default_on((9, 0)), Choice(2));
        assert_eq!(Choice::default_on((10, 0)), Choice(1));
        assert_eq!(Choice::parse("b-c").unwrap(), Choice(2));
        assert_eq!(Choice(2).choice_name(), "b-c");
        assert!(Choice(1).runs_on((8, 0)) && Choice(1).runs_on((9, 0)));
        assert!(!Choice(2).runs_on((8, 9)) && Choice(2).runs_on((9, 0)));
        let ampere = DeviceInfo {
            description: "A100 (sm_80)".into(),
            compute_capability: (8, 0),
        };
        assert!(Choice(1).require_device(&ampere, "k1").is_ok());
        let err = Choice(2)
            .require_device(&ampere, "k2")
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with("k2 runs on sm_90 devices only; A100 (sm_80) is not one (unset VAR)"),
            "{err}"
        );
        let err = Choice::parse("B-C").unwrap_err().to_string();
        assert!(
            err.ends_with("VAR must be one of `a`, `b-c`, got `B-C`"),
            "{err}"
        );
    }

    #[test]
    fn branch_storage_parses_its_names_and_refuses_others() {
        assert_eq!(BranchStorage::default_on((8, 6)), BranchStorage::F32);
        assert_eq!(BranchStorage::default_on((9, 0)), BranchStorage::Bf16);
        assert_eq!(BranchStorage::parse("f32").unwrap(), BranchStorage::F32);
        assert_eq!(BranchStorage::parse("bf16").unwrap(), BranchStorage::Bf16);
        assert_eq!(BranchStorage::parse("fused").unwrap(), BranchStorage::Fused);
        assert_eq!(BranchStorage::parse("tma").unwrap(), BranchStorage::Tma);
        for cc in [(8, 0), (8, 6), (8, 9), (9, 0), (10, 0), (12, 0)] {
            assert!(BranchStorage::F32.runs_on(cc) && BranchStorage::Bf16.runs_on(cc));
            assert_eq!(BranchStorage::Fused.runs_on(cc), cc == (9, 0), "{cc:?}");
            assert_eq!(BranchStorage::Tma.runs_on(cc), cc == (9, 0), "{cc:?}");
        }
        let err = BranchStorage::parse("f16").unwrap_err().to_string();
        assert!(
            err.contains("GEMMA_EMBED_BRANCH") && err.contains("`f16`"),
            "{err}"
        );
    }

    #[test]
    fn the_default_options_are_the_measured_paths() {
        for cc in [(8, 0), (8, 6), (8, 9), (10, 0), (12, 0)] {
            assert_eq!(
                CudaOptions::default_on(cc).describe(),
                "cublas+qkv_post, attention_flash, cublas+geglu, f32 branch"
            );
        }
        let hopper = CudaOptions::default_on((9, 0));
        assert_eq!(
            hopper.describe(),
            "cublas+qkv_post, attention_flash_wgmma, cublas+geglu, bf16 branch"
        );
        assert!(
            hopper.qkv.runs_on((9, 0))
                && hopper.attention.runs_on((9, 0))
                && hopper.mlp.runs_on((9, 0))
                && hopper.branch.runs_on((9, 0))
        );
        let candidates = CudaOptions {
            qkv: QkvKernel::Wgmma,
            attention: AttentionKernel::FlashWgmma,
            mlp: MlpKernel::Wgmma,
            branch: BranchStorage::Fused,
        };
        assert_eq!(
            candidates.describe(),
            "qkv_proj_wgmma, attention_flash_wgmma, gate_up_geglu_wgmma, fused branch"
        );
    }
}
