//! The CUDA backend's kernel choices, read once from the environment ([`CudaOptions`]).
//!
//! Each choice has a default that the GPU reports back (docs/gpu-report.md); the others are
//! candidates `tools/gpu-check.sh` checks and times next to it.

use super::attention::AttentionKernel;
use super::mlp::MlpKernel;
use super::qkv::QkvKernel;
use super::DeviceInfo;
use crate::{Error, Result};

/// A kernel choice read from one environment variable: `CHOICES[0]` when it is unset, the
/// value it names otherwise, an error listing the names for anything else.
pub trait KernelChoice: Copy + PartialEq + 'static {
    const VAR: &'static str;
    const CHOICES: &'static [(&'static str, Self)];
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

    /// Every choice, the default first.
    fn all() -> impl Iterator<Item = Self> {
        Self::CHOICES.iter().map(|&(_, choice)| choice)
    }

    fn from_env() -> Result<Self> {
        Self::parse(std::env::var(Self::VAR).ok().as_deref())
    }

    fn parse(value: Option<&str>) -> Result<Self> {
        let Some(value) = value else {
            return Ok(Self::CHOICES[0].1);
        };
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
    /// cuBLAS writes f32; `residual_norm` reads it (the default).
    F32,
    /// cuBLAS rounds to bf16; `residual_norm_bf16_branch` reads half the bytes. The worst
    /// cosine against sentence-transformers drops from 0.999924 to 0.999898 in the host model
    /// (`tests/cuda_numerics.rs`).
    Bf16,
    /// Never stored: `proj_residual_norm_wgmma` runs the norm in the projection's epilogue,
    /// on the f32 accumulators (sm_90 devices only; [`super::residual`]).
    Fused,
}

/// `GEMMA_EMBED_BRANCH=bf16` selects bf16, `fused` the fused kernel, `f32` (or unset) f32.
impl KernelChoice for BranchStorage {
    const VAR: &'static str = "GEMMA_EMBED_BRANCH";
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("f32", Self::F32),
        ("bf16", Self::Bf16),
        ("fused", Self::Fused),
    ];
    const SM90_ONLY: &'static [Self] = &[Self::Fused];
}

impl BranchStorage {
    /// The kernel that adds the branch to the residual stream.
    pub fn residual_norm_kernel(self) -> &'static str {
        match self {
            Self::F32 => "residual_norm",
            Self::Bf16 => "residual_norm_bf16_branch",
            Self::Fused => super::residual::KERNEL,
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

/// The first choice of each: what the environment selects when nothing is set.
impl Default for CudaOptions {
    fn default() -> Self {
        Self {
            qkv: QkvKernel::CHOICES[0].1,
            attention: AttentionKernel::CHOICES[0].1,
            mlp: MlpKernel::CHOICES[0].1,
            branch: BranchStorage::CHOICES[0].1,
        }
    }
}

impl CudaOptions {
    /// `GEMMA_EMBED_QKV`, `GEMMA_EMBED_ATTENTION`, `GEMMA_EMBED_MLP` and `GEMMA_EMBED_BRANCH`.
    pub fn from_env() -> Result<Self> {
        Ok(Self {
            qkv: QkvKernel::from_env()?,
            attention: AttentionKernel::from_env()?,
            mlp: MlpKernel::from_env()?,
            branch: BranchStorage::from_env()?,
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
            const SM90_ONLY: &'static [Self] = &[Choice(2)];
        }
        assert_eq!(Choice::parse(None).unwrap(), Choice(1));
        assert_eq!(Choice::parse(Some("b-c")).unwrap(), Choice(2));
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
        let err = Choice::parse(Some("B-C")).unwrap_err().to_string();
        assert!(
            err.ends_with("VAR must be one of `a`, `b-c`, got `B-C`"),
            "{err}"
        );
    }

    #[test]
    fn branch_storage_parses_its_names_and_refuses_others() {
        assert_eq!(BranchStorage::parse(None).unwrap(), BranchStorage::F32);
        assert_eq!(
            BranchStorage::parse(Some("f32")).unwrap(),
            BranchStorage::F32
        );
        assert_eq!(
            BranchStorage::parse(Some("bf16")).unwrap(),
            BranchStorage::Bf16
        );
        assert_eq!(
            BranchStorage::parse(Some("fused")).unwrap(),
            BranchStorage::Fused
        );
        for cc in [(8, 0), (8, 6), (8, 9), (9, 0), (10, 0), (12, 0)] {
            assert!(BranchStorage::F32.runs_on(cc) && BranchStorage::Bf16.runs_on(cc));
            assert_eq!(BranchStorage::Fused.runs_on(cc), cc == (9, 0), "{cc:?}");
        }
        let err = BranchStorage::parse(Some("f16")).unwrap_err().to_string();
        assert!(
            err.contains("GEMMA_EMBED_BRANCH") && err.contains("`f16`"),
            "{err}"
        );
    }

    #[test]
    fn the_default_options_are_the_measured_paths() {
        assert_eq!(
            CudaOptions::default().describe(),
            "cublas+qkv_post, attention_flash, cublas+geglu, f32 branch"
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
