//! The CUDA backend on the real model against sentence-transformers' golden embeddings
//! (float32, CPU), with every combination of the kernel choices the device runs (QKV paths,
//! attention kernels, MLP paths, branch storage: every name `GEMMA_EMBED_*` accepts): cosine at
//! least 0.9995 per vector, the parity target.
//! Skips, saying so, when the binary has no kernels or the machine has no CUDA device; then
//! like every real-model test, skips loudly without the model and fails under `CI=true`.

mod common;

use std::io::Write;

use gemma_embed::backend::cuda::attention::AttentionKernel;
use gemma_embed::backend::cuda::{
    self, mlp::MlpKernel, qkv::QkvKernel, BranchStorage, CudaBackend, CudaOptions, KernelChoice,
};
use gemma_embed::backend::{Backend, Batch, Embeddings};
use gemma_embed::model::Model;

const PARITY: f64 = 0.9995;

/// A function of its own: in a build without kernels `CudaBackend` is uninhabited, and code
/// after its construction would be unreachable.
fn cuda_forward(
    model: &Model,
    options: CudaOptions,
    batch: &Batch,
) -> gemma_embed::Result<Embeddings> {
    let mut backend = CudaBackend::with_options(model, options)?;
    backend.forward(batch, model.config.embedding_dim)
}

#[test]
fn cuda_embeddings_match_sentence_transformers_with_every_kernel_choice() {
    let device = match cuda::probe() {
        Ok(info) => info,
        Err(e) => {
            // Written to stderr directly, past the test harness's output capture.
            let _ = writeln!(std::io::stderr(), "SKIPPED: no CUDA device ({e})");
            return;
        }
    };
    let Some(dir) = common::real_model_dir() else {
        return;
    };
    let model = std::sync::Arc::new(Model::load_dir(&dir).expect("load the real model"));
    let golden = common::golden();
    let batch = golden.batch();
    let dim = model.config.embedding_dim;
    let cc = device.compute_capability;
    let mut combinations = Vec::new();
    for qkv in QkvKernel::all().filter(|k| k.runs_on(cc)) {
        for attention in AttentionKernel::all().filter(|k| k.runs_on(cc)) {
            for mlp in MlpKernel::all().filter(|k| k.runs_on(cc)) {
                for branch in BranchStorage::all().filter(|b| b.runs_on(cc)) {
                    combinations.push(CudaOptions {
                        qkv,
                        attention,
                        mlp,
                        branch,
                    });
                }
            }
        }
    }
    // The CPU backend's divisors, what takes each row back to the Dense output (TEI's
    // `normalize: false`): bf16 activations move them by far less than 1 %.
    let cpu_norms = gemma_embed::backend::cpu::CpuBackend::new(std::sync::Arc::clone(&model))
        .and_then(|mut cpu| cpu.forward(&batch, dim))
        .expect("CPU forward")
        .norms;
    for options in combinations {
        let label = options.describe();
        let out = cuda_forward(&model, options, &batch).expect("CUDA forward");
        let worst = golden.worst_cosine(&label, &out.data, dim);
        assert!(
            worst >= PARITY,
            "{label}: worst cosine {worst:.6} < {PARITY}"
        );
        for (i, (got, want)) in out.norms.iter().zip(&cpu_norms).enumerate() {
            assert!(
                ((got - want) / want).abs() < 1e-2,
                "{label}: sequence {i}: norm {got} against the CPU's {want}"
            );
        }
        assert_eq!(out.norms.len(), cpu_norms.len(), "{label}");
    }
}
