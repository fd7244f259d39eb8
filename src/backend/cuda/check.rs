//! On-device kernel checks: every kernel against its CPU twin from [`crate::backend::cpu::ops`]
//! run on the same bf16-rounded inputs, on fresh random data (seeded per run), with outputs
//! poisoned (NaN) before the launch so unwritten elements show up; then timed at a realistic
//! size.
//!
//! The shapes are EmbeddingGemma-300m's (`config.json`: hidden 768, 3 heads of 256,
//! intermediate 1152, eps 1e-6, sliding-layer RoPE base 1e4), so the timings are the engine's.

use cudarc::driver::{
    sys::{self, CUevent_flags},
    CudaFunction, CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg,
};
use half::bf16;

use super::attention::{check_attention, AttentionKernel};
use super::device::{driver_err, Device};
use super::gemm::{linear, GemmOut};
use super::mlp::{self, interleave_gate_up, GateUpGeglu, MlpKernel};
use super::ops::{
    rope_tables, to_bf16_bits, Branch, Kernels, ModelDims, Pooled, QkNorms, QkvBuffers, Residual,
    RopeTable, Tokens,
};
use super::options::{BranchStorage, KernelChoice};
use super::params::L2ProbeParams;
use super::qkv::{self, QkvKernel, QkvProj};
use super::report::{CheckFamily, KernelCheck, KernelChecks, Timing};
use super::residual::{self, ProjResidualNorm};
use crate::backend::cpu::ops as cpu;
use crate::rng::SplitMix64;
use crate::{Error, Result};

/// EmbeddingGemma-300m's shapes and constants.
pub fn check_dims() -> ModelDims {
    ModelDims {
        hidden: 768,
        num_heads: 3,
        head_dim: 256,
        intermediate: 1152,
        embed_dim: 768,
        eps: 1e-6,
        embed_scale: 27.75,
        q_scale: 0.0625,
    }
}
const ROPE_THETA: f32 = 10_000.0;
const MAX_POSITIONS: usize = 2048;
const VOCAB: usize = 4096;

/// Sequence lengths of the checked batch: tile, warp and window edges.
const CHECK_LENGTHS: &[u32] = &[
    1, 2, 3, 15, 16, 17, 63, 64, 65, 127, 128, 129, 255, 256, 257, 258, 511, 512, 513,
];
/// Tokens in the timed problems (32 sequences of 512).
const TIMED_TOKENS: usize = 16384;
const TIMED_SEQ_LEN: u32 = 512;
const TIMED_REPS: usize = 20;

/// bf16 outputs are compared with the reference rounded to bf16: f32 differences may flip a
/// rounding, so allow one ulp at the largest magnitude and a relative L2 of a fraction of an ulp.
const BF16_OUT_TOL: (f64, f64) = (1.0 / 128.0, 2e-3);
/// f32 kernel math against the CPU twin: a few f32 ulps, relative to the largest value.
const F32_OUT_TOL: f64 = 1e-5;

pub fn bf16_to_f32(bits: &[u16]) -> Vec<f32> {
    bits.iter().map(|&b| bf16::from_bits(b).to_f32()).collect()
}

/// The reference rounded where the kernel rounds its output.
fn round_bf16(values: &[f32]) -> Vec<f32> {
    values.iter().map(|&v| bf16::from_f32(v).to_f32()).collect()
}

/// Tolerance of an f32 output computed in f32: a few ulps of the largest reference value.
fn f32_tol(reference: &[f32]) -> (f64, f64) {
    let max = reference.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
    (max * F32_OUT_TOL, F32_OUT_TOL)
}

/// Absolute tolerance of a bf16 output: one bf16 ulp at the largest reference magnitude.
fn bf16_tol(reference: &[f32]) -> (f64, f64) {
    let max = reference.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
    (max * BF16_OUT_TOL.0, BF16_OUT_TOL.1)
}

fn offsets(lengths: &[u32]) -> Vec<u32> {
    let mut offsets = vec![0];
    for &len in lengths {
        offsets.push(offsets.last().expect("starts with 0") + len);
    }
    offsets
}

fn positions(seq_offsets: &[u32]) -> Vec<u32> {
    seq_offsets
        .windows(2)
        .flat_map(|w| 0..w[1] - w[0])
        .collect()
}

/// A device buffer filled with `poison` (NaN patterns), so unwritten outputs stay visible.
pub fn poisoned<T: DeviceRepr + Copy>(
    dev: &Device,
    len: usize,
    poison: T,
    what: &str,
) -> Result<CudaSlice<T>> {
    dev.upload(&vec![poison; len], what)
}

const F32_POISON: f32 = f32::NAN;
const BF16_POISON: u16 = 0x7fc0;
const U32_POISON: u32 = u32::MAX;

pub fn download<T: DeviceRepr + Default + Clone>(
    dev: &Device,
    buffer: &CudaSlice<T>,
    len: usize,
    what: &str,
) -> Result<Vec<T>> {
    let mut host = vec![T::default(); len];
    dev.stream
        .memcpy_dtoh(&buffer.slice(..len), &mut host)
        .map_err(driver_err(format!("download {what}")))?;
    dev.synchronize()?;
    Ok(host)
}

/// Median wall time of `launch` over [`TIMED_REPS`] runs, each between two CUDA events.
pub fn time_launches(dev: &Device, mut launch: impl FnMut() -> Result<()>) -> Result<f64> {
    let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
    let start = dev
        .ctx
        .new_event(flags)
        .map_err(driver_err("create event"))?;
    let end = dev
        .ctx
        .new_event(flags)
        .map_err(driver_err("create event"))?;
    launch()?; // warm-up
    let mut times = Vec::with_capacity(TIMED_REPS);
    for _ in 0..TIMED_REPS {
        start
            .record(&dev.stream)
            .map_err(driver_err("record event"))?;
        launch()?;
        end.record(&dev.stream)
            .map_err(driver_err("record event"))?;
        end.synchronize().map_err(driver_err("wait for event"))?;
        times.push(f64::from(start.elapsed_ms(&end).map_err(driver_err("event time"))?) * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

pub fn timing(case: String, median_us: f64, bytes: f64, flops: f64) -> Timing {
    Timing {
        case,
        median_us,
        gbytes_per_s: bytes / (median_us * 1e-6) / 1e9,
        tflops: flops / (median_us * 1e-6) / 1e12,
        l2_gbytes_per_s: None,
    }
}

/// Operand bytes a tiled GEMM's CTAs load from L2: for each of `rows / block_m` (rounded up) row
/// blocks and `weight_rows / cta_weight_rows` weight blocks, a `block_m x k` slab of x and a
/// `cta_weight_rows x k` slab of the weight, bf16.
fn tiled_gemm_l2_bytes(
    rows: usize,
    block_m: usize,
    (weight_rows, cta_weight_rows): (usize, usize),
    k: usize,
) -> f64 {
    let ctas = rows.div_ceil(block_m) * (weight_rows / cta_weight_rows);
    (ctas * (block_m + cta_weight_rows) * k * 2) as f64
}

/// Run the check families (every one in [`CheckFamily::ALL`] order, or those named in `only`) on
/// device 0. A family that fails to run (launch error, fault) is reported as one failed entry
/// carrying the error, and the remaining families still run (after a fault the context is
/// unusable, so they report the same error: `gemma-embed check-kernels --family NAME` runs one
/// in a fresh process). `progress` gets every result so far after each family, so a caller can
/// keep them even if a later family hangs.
pub fn run_kernel_checks(
    seed: u64,
    only: &[String],
    progress: &mut dyn FnMut(&[KernelCheck]) -> Result<()>,
) -> Result<KernelChecks> {
    let only = only
        .iter()
        .map(|name| CheckFamily::parse(name))
        .collect::<Result<Vec<_>>>()?;
    let dev = Device::open()?;
    let kernels = Kernels::load(&dev, check_dims())?;
    let mut checks = Vec::new();
    for family in CheckFamily::ALL
        .into_iter()
        .filter(|f| only.is_empty() || only.contains(f))
    {
        let name = family.name();
        let results = run_family(&dev, &kernels, family, &mut family_rng(seed, name))
            .unwrap_or_else(|e| vec![KernelCheck::error(name, e.to_string())]);
        checks.extend(results.into_iter().map(|c| c.in_family(name)));
        progress(&checks)?;
    }
    Ok(KernelChecks {
        device: dev.info.description.clone(),
        checks,
    })
}

/// The inputs of one family: drawn from `seed` and the family's name alone, so that
/// `--family NAME --seed S` redraws what the full run with seed S checked.
fn family_rng(seed: u64, family: &str) -> SplitMix64 {
    // FNV-1a of the name.
    let name_hash = family.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    SplitMix64::new(seed ^ name_hash)
}

/// One family's checks.
fn run_family(
    dev: &Device,
    kernels: &Kernels,
    family: CheckFamily,
    rng: &mut SplitMix64,
) -> Result<Vec<KernelCheck>> {
    match family {
        CheckFamily::L2ReadProbe => check_l2_probe(dev, rng),
        CheckFamily::EmbedTokens => check_embed(dev, kernels, rng),
        CheckFamily::ResidualNorm => check_residual_norm(dev, kernels, false, rng),
        CheckFamily::QkvPost => check_qkv_post(dev, kernels, rng),
        CheckFamily::Geglu => Ok(vec![check_geglu(dev, kernels, rng)?]),
        CheckFamily::PoolEmbeddings => check_pool(dev, kernels, rng),
        CheckFamily::Gemm => check_gemms(dev, rng),
        CheckFamily::Attention => check_attention(
            dev,
            &[AttentionKernel::Reference, AttentionKernel::Flash],
            rng,
        ),
        CheckFamily::ResidualNormBf16Branch => check_residual_norm(dev, kernels, true, rng),
        CheckFamily::GateUpGeglu => check_gate_up_geglu(dev, kernels, rng),
        CheckFamily::AttentionFlashWgmma => {
            check_sm90_attention(dev, AttentionKernel::FlashWgmma, rng)
        }
        CheckFamily::AttentionFlashTma => check_sm90_attention(dev, AttentionKernel::FlashTma, rng),
        CheckFamily::AttentionFlashTmaFree => {
            check_sm90_attention(dev, AttentionKernel::FlashTmaFree, rng)
        }
        CheckFamily::QkvProj => check_qkv_proj(dev, kernels, rng),
        CheckFamily::ProjResidualNorm => check_proj_residual_norm(dev, kernels, rng),
    }
}

/// An sm_90-only attention kernel's checks: none on other devices.
fn check_sm90_attention(
    dev: &Device,
    kernel: AttentionKernel,
    rng: &mut SplitMix64,
) -> Result<Vec<KernelCheck>> {
    if kernel.runs_on(dev.info.compute_capability) {
        check_attention(dev, &[kernel], rng)
    } else {
        Ok(Vec::new())
    }
}

/// `kernels/probe.cu`'s kernel.
const L2_PROBE_KERNEL: &str = "l2_read_probe";
/// `L2_PROBE_THREADS` in kernels/params.h: the probe's block size.
const L2_PROBE_THREADS: u32 = 256;
/// Passes of the timed probe over its buffer.
const L2_PROBE_REPS: u32 = 32;

/// The typed launch of `l2_read_probe`: one wave of as many blocks as the device keeps resident,
/// so no SM idles through a tail of leftover blocks.
struct L2Probe {
    func: CudaFunction,
    blocks: u32,
}

impl L2Probe {
    fn load(dev: &Device) -> Result<Self> {
        let func = dev.function(L2_PROBE_KERNEL)?;
        let sms = dev.multiprocessors;
        let per_sm = func
            .occupancy_max_active_blocks_per_multiprocessor(L2_PROBE_THREADS, 0, None)
            .map_err(driver_err(format!("occupancy of {L2_PROBE_KERNEL}")))?;
        let blocks = sms * per_sm;
        if blocks == 0 {
            return Err(Error::Cuda(format!(
                "{L2_PROBE_KERNEL}: no block of {L2_PROBE_THREADS} threads fits ({sms} SMs, \
                 {per_sm} blocks each)"
            )));
        }
        Ok(Self { func, blocks })
    }

    /// `sum[0] += reps · (wrapping sum of buffer)`, reading `buffer` `reps` times through L2.
    fn launch(
        &self,
        dev: &Device,
        buffer: &CudaSlice<u32>,
        sum: &mut CudaSlice<u32>,
        reps: u32,
    ) -> Result<()> {
        if !buffer.len().is_multiple_of(4) || sum.is_empty() {
            return Err(Error::Cuda(format!(
                "{L2_PROBE_KERNEL}: the buffer ({} words) must be whole 16-byte chunks and the \
                 sum one word ({})",
                buffer.len(),
                sum.len()
            )));
        }
        let num_words = u32::try_from(buffer.len()).map_err(|_| {
            Error::Cuda(format!(
                "{L2_PROBE_KERNEL}: {} words exceed u32",
                buffer.len()
            ))
        })?;
        let s = &dev.stream;
        let (buffer_ptr, _buffer) = buffer.device_ptr(s);
        let (sum_ptr, _sum) = sum.device_ptr_mut(s);
        let params = L2ProbeParams {
            buffer: buffer_ptr as *const u32,
            sum: sum_ptr as *mut u32,
            num_words,
            reps,
        };
        let cfg = LaunchConfig {
            grid_dim: (self.blocks, 1, 1),
            block_dim: (L2_PROBE_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: L2ProbeParams matches the kernel's parameter (same header); the kernel reads
        // buffer[..num_words] (num_words = its length, whole 16-byte chunks: checked above) and
        // adds into sum[0], and the guards keep both alive and ordered on the stream until the
        // launch is enqueued.
        unsafe { s.launch_builder(&self.func).arg(&params).launch(cfg) }
            .map_err(driver_err(format!("launch {L2_PROBE_KERNEL}")))?;
        Ok(())
    }
}

/// `l2_read_probe` (kernels/probe.cu) over a quarter of the card's L2 (H100's L2 is two halves
/// that may each keep a copy of what all SMs read, so half of it might not stay resident): its
/// sum must equal the buffer's (compared as two exact 16-bit halves), and its rate, the card's
/// L2-to-SM read bandwidth, is the ceiling for the tiled GEMM kernels' operand loads
/// ([`Timing::l2_gbytes_per_s`]).
fn check_l2_probe(dev: &Device, rng: &mut SplitMix64) -> Result<Vec<KernelCheck>> {
    let l2_bytes = dev
        .ctx
        .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)
        .map_err(driver_err("query the L2 cache size"))?;
    let words = (usize::try_from(l2_bytes).unwrap_or(0) / 4 / 4 / 4 * 4).max(4);
    let host: Vec<u32> = (0..words).map(|_| rng.next_u64() as u32).collect();
    let buffer_sum = host.iter().fold(0u32, |sum, &w| sum.wrapping_add(w));
    let probe = L2Probe::load(dev)?;
    let buffer = dev.upload(&host, "probe buffer")?;
    let mut sum = dev.upload(&[0u32], "probe sum")?;
    probe.launch(dev, &buffer, &mut sum, 1)?;
    let got = download(dev, &sum, 1, "probe sum")?[0];
    let halves = |v: u32| [(v & 0xffff) as f32, (v >> 16) as f32];
    let case = format!("{} MB, 1 pass", words * 4 / 1_000_000);
    let check = KernelCheck::compare(
        L2_PROBE_KERNEL,
        case,
        &halves(got),
        &halves(buffer_sum),
        (0.0, 0.0),
    );
    let us = time_launches(dev, || probe.launch(dev, &buffer, &mut sum, L2_PROBE_REPS))?;
    let bytes = (words * 4) as f64 * f64::from(L2_PROBE_REPS);
    let timed_case = format!("{} MB x {L2_PROBE_REPS} passes", words * 4 / 1_000_000);
    Ok(vec![check.with_timing(timing(timed_case, us, bytes, 0.0))])
}

/// The edge lengths (the last row block partial), repeated until a persistent kernel's tiles
/// (`block_m` rows by `col_blocks`, each on `ctas_per_tile` CTAs) outnumber the tiles the device
/// runs at once (one CTA per SM), so that its persistent CTAs walk more than one tile.
fn persistent_check_case(
    dev: &Device,
    block_m: usize,
    col_blocks: usize,
    ctas_per_tile: usize,
) -> TokenCase {
    let at_once = dev.multiprocessors as usize / ctas_per_tile;
    let mut lengths = CHECK_LENGTHS.to_vec();
    while TokenCase::new(&lengths).n.div_ceil(block_m) * col_blocks <= at_once {
        lengths.extend_from_slice(CHECK_LENGTHS);
    }
    TokenCase::new(&lengths)
}

struct TokenCase {
    lengths: Vec<u32>,
    seq_offsets: Vec<u32>,
    n: usize,
}

impl TokenCase {
    fn new(lengths: &[u32]) -> Self {
        let seq_offsets = offsets(lengths);
        let n = *seq_offsets.last().expect("non-empty") as usize;
        Self {
            lengths: lengths.to_vec(),
            seq_offsets,
            n,
        }
    }

    fn timed() -> Self {
        Self::new(&vec![TIMED_SEQ_LEN; TIMED_TOKENS / TIMED_SEQ_LEN as usize])
    }

    fn describe(&self) -> String {
        format!("tokens={} seqs={}", self.n, self.lengths.len())
    }

    fn device_tokens(&self, dev: &Device, ids: &[u32]) -> Result<Tokens> {
        Ok(Tokens {
            ids: dev.upload(ids, "ids")?,
            seq_offsets: dev.upload(&self.seq_offsets, "seq_offsets")?,
            positions: dev.upload(&positions(&self.seq_offsets), "positions")?,
            num_tokens: self.n,
            num_seqs: self.lengths.len(),
        })
    }
}

fn poisoned_residual(dev: &Device, n: usize, hidden: usize) -> Result<Residual> {
    Ok(Residual {
        x: poisoned(dev, n * hidden, F32_POISON, "residual")?,
        x_bf16: poisoned(dev, n * hidden, BF16_POISON, "residual bf16")?,
        inv_rms: poisoned(dev, n, F32_POISON, "inv_rms")?,
    })
}

fn check_embed(dev: &Device, k: &Kernels, rng: &mut SplitMix64) -> Result<Vec<KernelCheck>> {
    let d = k.dims;
    let case = TokenCase::new(CHECK_LENGTHS);
    let table_bits = rng.bf16s(VOCAB * d.hidden, -0.5, 0.5);
    let ids: Vec<u32> = (0..case.n)
        .map(|_| (rng.next_u64() % VOCAB as u64) as u32)
        .collect();
    let table_dev = dev.upload(&table_bits, "table")?;
    let mut tokens = case.device_tokens(dev, &ids)?;
    tokens.positions = poisoned(dev, case.n, U32_POISON, "positions")?;
    let mut out = poisoned_residual(dev, case.n, d.hidden)?;
    k.embed(dev, &mut tokens, &table_dev, &mut out)?;

    let table = bf16_to_f32(&table_bits);
    let mut x_ref = vec![0.0f32; case.n * d.hidden];
    cpu::embed_scaled(&table, d.hidden, &ids, d.embed_scale, &mut x_ref);
    let inv_ref = cpu::inverse_rms_rows_f64(&x_ref, d.hidden, d.eps);
    let x_bf16_ref = round_bf16(&x_ref);
    let pos_ref: Vec<f32> = positions(&case.seq_offsets)
        .iter()
        .map(|&p| p as f32)
        .collect();

    let x = download(dev, &out.x, case.n * d.hidden, "residual")?;
    let x_bf16 = bf16_to_f32(&download(
        dev,
        &out.x_bf16,
        case.n * d.hidden,
        "residual bf16",
    )?);
    let inv = download(dev, &out.inv_rms, case.n, "inv_rms")?;
    let pos: Vec<f32> = download(dev, &tokens.positions, case.n, "positions")?
        .iter()
        .map(|&p| p as f32)
        .collect();

    let desc = case.describe();
    let mut checks = vec![
        KernelCheck::compare(
            "embed_tokens/residual",
            desc.clone(),
            &x,
            &x_ref,
            f32_tol(&x_ref),
        ),
        KernelCheck::compare(
            "embed_tokens/bf16",
            desc.clone(),
            &x_bf16,
            &x_bf16_ref,
            bf16_tol(&x_ref),
        ),
        KernelCheck::compare(
            "embed_tokens/inv_rms",
            desc.clone(),
            &inv,
            &inv_ref,
            f32_tol(&inv_ref),
        ),
        KernelCheck::compare("embed_tokens/positions", desc, &pos, &pos_ref, (0.0, 0.0)),
    ];

    let timed = TokenCase::timed();
    let ids: Vec<u32> = (0..timed.n)
        .map(|_| (rng.next_u64() % VOCAB as u64) as u32)
        .collect();
    let mut tokens = timed.device_tokens(dev, &ids)?;
    let mut out = poisoned_residual(dev, timed.n, d.hidden)?;
    let us = time_launches(dev, || k.embed(dev, &mut tokens, &table_dev, &mut out))?;
    let bytes = timed.n as f64 * (d.hidden as f64 * (2.0 + 4.0 + 2.0) + 12.0);
    checks[0] = checks[0]
        .clone()
        .with_timing(timing(timed.describe(), us, bytes, 0.0));
    Ok(checks)
}

/// `residual_norm` (an f32 branch) or `residual_norm_bf16_branch` (`bf16_branch`).
fn check_residual_norm(
    dev: &Device,
    k: &Kernels,
    bf16_branch: bool,
    rng: &mut SplitMix64,
) -> Result<Vec<KernelCheck>> {
    let d = k.dims;
    let h = d.hidden;
    let storage = if bf16_branch {
        BranchStorage::Bf16
    } else {
        BranchStorage::F32
    };
    let name = storage.residual_norm_kernel();
    let case = TokenCase::new(CHECK_LENGTHS);
    let n = case.n;
    // Magnitudes like the real model's: residuals up to ~1e3, norm weights up to ~10.
    let mut branch_host = rng.f32s(n * h, -30.0, 30.0);
    if bf16_branch {
        branch_host = round_bf16(&branch_host);
    }
    let residual_host = rng.f32s(n * h, -500.0, 500.0);
    let weight_host = rng.f32s(h, -1.0, 8.0);
    let branch = upload_branch(dev, bf16_branch, &branch_host)?;
    let weight = dev.upload(&weight_host, "post norm")?;
    let mut residual = poisoned_residual(dev, n, h)?;
    residual.x = dev.upload(&residual_host, "residual")?;
    k.residual_norm(dev, n, &branch, &weight, &mut residual)?;

    let reference = residual_norm_reference(&d, &residual_host, &branch_host, &weight_host);
    let mut checks = compare_residual(dev, (name, &case.describe()), &residual, &reference)?;

    let timed = TokenCase::timed();
    let branch = upload_branch(dev, bf16_branch, &rng.f32s(timed.n * h, -30.0, 30.0))?;
    let mut residual = poisoned_residual(dev, timed.n, h)?;
    residual.x = dev.upload(&rng.f32s(timed.n * h, -500.0, 500.0), "residual")?;
    let us = time_launches(dev, || {
        k.residual_norm(dev, timed.n, &branch, &weight, &mut residual)
    })?;
    // Reads the branch (f32 or bf16) and residual (f32), writes residual (f32), its bf16 copy
    // and inv_rms.
    let branch_bytes = if bf16_branch { 2.0 } else { 4.0 };
    let bytes = timed.n as f64 * (h as f64 * (branch_bytes + 4.0 + 4.0 + 2.0) + 4.0);
    checks[0] = checks[0]
        .clone()
        .with_timing(timing(timed.describe(), us, bytes, 0.0));
    Ok(checks)
}

/// The CPU twins of `residual_norm`: the new residual and its inverse RMS per row.
fn residual_norm_reference(
    d: &ModelDims,
    residual: &[f32],
    branch: &[f32],
    post_norm: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let mut x = residual.to_vec();
    cpu::residual_add_rms_norm(&mut x, branch, post_norm, d.eps);
    let inv_rms = cpu::inverse_rms_rows_f64(&x, d.hidden, d.eps);
    (x, inv_rms)
}

/// `name/residual`, `name/bf16` (the copy) and `name/inv_rms` against the reference.
fn compare_residual(
    dev: &Device,
    (name, case): (&str, &str),
    residual: &Residual,
    (x_ref, inv_ref): &(Vec<f32>, Vec<f32>),
) -> Result<Vec<KernelCheck>> {
    let (len, n) = (x_ref.len(), inv_ref.len());
    let x = download(dev, &residual.x, len, "residual")?;
    let x_bf16 = bf16_to_f32(&download(dev, &residual.x_bf16, len, "residual bf16")?);
    let inv = download(dev, &residual.inv_rms, n, "inv_rms")?;
    let cols = len / n.max(1);
    Ok(vec![
        KernelCheck::compare_matrix(
            &format!("{name}/residual"),
            case.to_string(),
            &x,
            x_ref,
            cols,
            f32_tol(x_ref),
        ),
        KernelCheck::compare_matrix(
            &format!("{name}/bf16"),
            case.to_string(),
            &x_bf16,
            &round_bf16(x_ref),
            cols,
            bf16_tol(x_ref),
        ),
        KernelCheck::compare(
            &format!("{name}/inv_rms"),
            case.to_string(),
            &inv,
            inv_ref,
            f32_tol(inv_ref),
        ),
    ])
}

/// The O and down projections added to the residual stream: the cuBLAS projection into an f32
/// branch followed by `residual_norm` (the baseline), then `proj_residual_norm_wgmma` and
/// `proj_residual_norm_tma` where the device runs them (sm_90), all against the CPU twins
/// (`linear`, then `residual_norm`'s) on the same bf16 inputs, and timed at the same size. Both
/// projections' baselines run before the fused kernels, the TMA one last, so that a fused kernel
/// that fails to load or run (a fault poisons the context) is reported as one failed entry after
/// the results that came before it.
fn check_proj_residual_norm(
    dev: &Device,
    k: &Kernels,
    rng: &mut SplitMix64,
) -> Result<Vec<KernelCheck>> {
    let d = k.dims;
    let h = d.hidden;
    let case = persistent_check_case(dev, residual::BLOCK_M, 1, residual::CLUSTER);
    let timed = TokenCase::timed();
    let n = case.n;
    let fresh_residual = |rows: usize, values: &[f32]| -> Result<Residual> {
        let mut residual = poisoned_residual(dev, rows, h)?;
        residual.x = dev.upload(values, "residual")?;
        Ok(residual)
    };
    let mut projections = Vec::new();
    for (projection, k_dim) in [("O", d.q_width()), ("down", d.intermediate)] {
        let w_bits = rng.bf16s(h * k_dim, -0.1, 0.1);
        let post_norm_host = rng.f32s(h, -1.0, 8.0);
        let x_bits = rng.bf16s(n * k_dim, -2.0, 2.0);
        let residual_host = rng.f32s(n * h, -500.0, 500.0);
        let mut branch_host = vec![0.0f32; n * h];
        cpu::linear(
            &bf16_to_f32(&x_bits),
            &bf16_to_f32(&w_bits),
            k_dim,
            h,
            &mut branch_host,
        );
        projections.push(ProjectionCase {
            k_dim,
            w: dev.upload(&w_bits, "projection weight")?,
            post_norm: dev.upload(&post_norm_host, "post norm")?,
            x: dev.upload(&x_bits, "x")?,
            reference: residual_norm_reference(&d, &residual_host, &branch_host, &post_norm_host),
            residual_host,
            desc: format!("{projection}: {} k={k_dim}", case.describe()),
            x_timed: dev.upload(&rng.bf16s(timed.n * k_dim, -2.0, 2.0), "x")?,
            residual_timed: rng.f32s(timed.n * h, -500.0, 500.0),
            timed_case: format!("{projection}: m={} n={h} k={k_dim}", timed.n),
        });
    }
    // x, the weight, and the residual read and written with its copy and inv_rms; the baseline
    // also writes the f32 branch and reads it back.
    let flops = |p: &ProjectionCase| (2 * timed.n * h * p.k_dim) as f64;
    let fused_bytes = |p: &ProjectionCase| {
        ((timed.n * p.k_dim + h * p.k_dim) * 2 + timed.n * (h * 10 + 4)) as f64
    };

    let mut checks = Vec::new();
    for p in &projections {
        let run_baseline =
            |x: &CudaSlice<u16>, rows: usize, branch: &mut Branch, residual: &mut Residual| {
                linear(dev, x, &p.w, branch.gemm_out(), (rows, h, p.k_dim))?;
                k.residual_norm(dev, rows, branch, &p.post_norm, residual)
            };
        let mut branch = Branch::F32(dev.alloc(n * h, "branch")?);
        let mut residual = fresh_residual(n, &p.residual_host)?;
        run_baseline(&p.x, n, &mut branch, &mut residual)?;
        let mut baseline = compare_residual(
            dev,
            ("proj+residual_norm (cuBLAS)", &p.desc),
            &residual,
            &p.reference,
        )?;
        let mut branch = Branch::F32(dev.alloc(timed.n * h, "branch")?);
        let mut residual = fresh_residual(timed.n, &p.residual_timed)?;
        let us = time_launches(dev, || {
            run_baseline(&p.x_timed, timed.n, &mut branch, &mut residual)
        })?;
        let bytes = fused_bytes(p) + (timed.n * h * 4 * 2) as f64;
        baseline[0] =
            baseline[0]
                .clone()
                .with_timing(timing(p.timed_case.clone(), us, bytes, flops(p)));
        checks.extend(baseline);
    }

    for storage in [BranchStorage::Fused, BranchStorage::Tma] {
        if !storage.runs_on(dev.info.compute_capability) {
            continue;
        }
        let name = storage.residual_norm_kernel();
        let mut fused = || -> Result<()> {
            let kernel = ProjResidualNorm::load(dev, storage)?;
            for p in &projections {
                let run = |x: &CudaSlice<u16>, rows: usize, residual: &mut Residual| {
                    kernel.launch(dev, &d, (x, &p.w, &p.post_norm), (rows, p.k_dim), residual)
                };
                let mut residual = fresh_residual(n, &p.residual_host)?;
                run(&p.x, n, &mut residual)?;
                let mut fused_checks =
                    compare_residual(dev, (name, &p.desc), &residual, &p.reference)?;
                let mut residual = fresh_residual(timed.n, &p.residual_timed)?;
                let us = time_launches(dev, || run(&p.x_timed, timed.n, &mut residual))?;
                let l2_bytes =
                    tiled_gemm_l2_bytes(timed.n, residual::BLOCK_M, (h, residual::SLICE), p.k_dim);
                fused_checks[0] = fused_checks[0].clone().with_timing(
                    timing(p.timed_case.clone(), us, fused_bytes(p), flops(p))
                        .with_l2_bytes(l2_bytes),
                );
                checks.extend(fused_checks);
            }
            Ok(())
        };
        if let Err(e) = fused() {
            checks.push(KernelCheck::error(name, e.to_string()));
        }
    }
    Ok(checks)
}

/// One projection's problem for [`check_proj_residual_norm`]: its inputs on the device, the
/// CPU twins' result, and the timed size's inputs.
struct ProjectionCase {
    k_dim: usize,
    w: CudaSlice<u16>,
    post_norm: CudaSlice<f32>,
    x: CudaSlice<u16>,
    residual_host: Vec<f32>,
    reference: (Vec<f32>, Vec<f32>),
    desc: String,
    x_timed: CudaSlice<u16>,
    residual_timed: Vec<f32>,
    timed_case: String,
}

/// `values` on the device, in f32 or rounded to bf16.
fn upload_branch(dev: &Device, bf16_branch: bool, values: &[f32]) -> Result<Branch> {
    Ok(if bf16_branch {
        Branch::Bf16(dev.upload(&to_bf16_bits(values), "branch (bf16)")?)
    } else {
        Branch::F32(dev.upload(values, "branch")?)
    })
}

/// Random q/k norm weights and the sliding layers' RoPE table, on the host and the device:
/// the per-layer inputs of `qkv_post` and `qkv_proj_wgmma`.
struct QkNormsCase {
    q_norm_host: Vec<f32>,
    k_norm_host: Vec<f32>,
    cos_host: Vec<f32>,
    sin_host: Vec<f32>,
    q_norm: CudaSlice<f32>,
    k_norm: CudaSlice<f32>,
    rope: RopeTable,
}

impl QkNormsCase {
    fn new(dev: &Device, d: &ModelDims, rng: &mut SplitMix64) -> Result<Self> {
        let q_norm_host = rng.f32s(d.head_dim, -1.0, 2.0);
        let k_norm_host = rng.f32s(d.head_dim, -1.0, 2.0);
        let (cos_host, sin_host) = rope_tables(ROPE_THETA, d.head_dim, MAX_POSITIONS);
        Ok(Self {
            q_norm: dev.upload(&q_norm_host, "q_norm")?,
            k_norm: dev.upload(&k_norm_host, "k_norm")?,
            rope: RopeTable {
                cos: dev.upload(&cos_host, "rope cos")?,
                sin: dev.upload(&sin_host, "rope sin")?,
                max_positions: MAX_POSITIONS,
            },
            q_norm_host,
            k_norm_host,
            cos_host,
            sin_host,
        })
    }

    fn norms(&self) -> QkNorms<'_> {
        QkNorms {
            q_norm: &self.q_norm,
            k_norm: &self.k_norm,
            rope: &self.rope,
        }
    }

    /// `qkv_post` from the CPU twins on the projection `qkv` (`[rows, qkv_width]`):
    /// inverse-RMS scale (the folded input norm), per-head RMSNorm of q and k, RoPE, query
    /// scale. Returns (q, k, v).
    fn reference(
        &self,
        d: &ModelDims,
        qkv: &[f32],
        inv_rms: &[f32],
        positions: &[u32],
    ) -> [Vec<f32>; 3] {
        let (hd, heads) = (d.head_dim, d.num_heads);
        let (mut q, mut k, mut v) = (Vec::new(), Vec::new(), Vec::new());
        for (row, &r) in qkv.chunks_exact(d.qkv_width()).zip(inv_rms) {
            let scaled: Vec<f32> = row.iter().map(|&x| x * r).collect();
            q.extend_from_slice(&scaled[..heads * hd]);
            k.extend_from_slice(&scaled[heads * hd..(heads + 1) * hd]);
            v.extend_from_slice(&scaled[(heads + 1) * hd..]);
        }
        cpu::rms_norm_in_place(&mut q, &self.q_norm_host, d.eps);
        cpu::rms_norm_in_place(&mut k, &self.k_norm_host, d.eps);
        let (cos, sin) = (&self.cos_host, &self.sin_host);
        cpu::rope(&mut q, positions, heads, hd, cos, sin);
        cpu::rope(&mut k, positions, 1, hd, cos, sin);
        q.iter_mut().for_each(|x| *x *= d.q_scale);
        [q, k, v]
    }
}

fn poisoned_qkv_buffers(dev: &Device, d: &ModelDims, n: usize) -> Result<QkvBuffers> {
    Ok(QkvBuffers {
        q: poisoned(dev, n * d.q_width(), BF16_POISON, "q")?,
        k: poisoned(dev, n * d.head_dim, BF16_POISON, "k")?,
        v: poisoned(dev, n * d.head_dim, BF16_POISON, "v")?,
    })
}

/// `name/q`, `name/k`, `name/v`: each output against its reference rounded to bf16, with
/// `tolerance` from the reference (one head of head_dim columns per row of the matrix map).
fn compare_qkv(
    dev: &Device,
    d: &ModelDims,
    (name, case): (&str, &str),
    out: &QkvBuffers,
    references: &[Vec<f32>; 3],
    tolerance: impl Fn(&[f32]) -> (f64, f64),
) -> Result<Vec<KernelCheck>> {
    let mut checks = Vec::new();
    for ((part, buffer), reference) in [("q", &out.q), ("k", &out.k), ("v", &out.v)]
        .into_iter()
        .zip(references)
    {
        let name = format!("{name}/{part}");
        let got = bf16_to_f32(&download(dev, buffer, reference.len(), &name)?);
        checks.push(KernelCheck::compare_matrix(
            &name,
            case.to_string(),
            &got,
            &round_bf16(reference),
            d.head_dim,
            tolerance(reference),
        ));
    }
    Ok(checks)
}

fn check_qkv_post(dev: &Device, k: &Kernels, rng: &mut SplitMix64) -> Result<Vec<KernelCheck>> {
    let d = k.dims;
    let case = TokenCase::new(CHECK_LENGTHS);
    let n = case.n;
    let w = d.qkv_width();
    let qkv_bits = rng.bf16s(n * w, -4.0, 4.0);
    let inv_rms_host = rng.f32s(n, 0.05, 2.0);
    let norms = QkNormsCase::new(dev, &d, rng)?;
    let qkv = dev.upload(&qkv_bits, "qkv")?;
    let inv_rms = dev.upload(&inv_rms_host, "inv_rms")?;
    let tokens = case.device_tokens(dev, &vec![0; n])?;
    let mut out = poisoned_qkv_buffers(dev, &d, n)?;
    k.qkv_post(dev, &tokens, &qkv, &inv_rms, norms.norms(), &mut out)?;

    let references = norms.reference(
        &d,
        &bf16_to_f32(&qkv_bits),
        &inv_rms_host,
        &positions(&case.seq_offsets),
    );
    let mut checks = compare_qkv(
        dev,
        &d,
        ("qkv_post", &case.describe()),
        &out,
        &references,
        bf16_tol,
    )?;

    let timed = TokenCase::timed();
    let qkv = dev.upload(&rng.bf16s(timed.n * w, -4.0, 4.0), "qkv")?;
    let inv_rms = dev.upload(&rng.f32s(timed.n, 0.05, 2.0), "inv_rms")?;
    let tokens = timed.device_tokens(dev, &vec![0; timed.n])?;
    let mut out = poisoned_qkv_buffers(dev, &d, timed.n)?;
    let us = time_launches(dev, || {
        k.qkv_post(dev, &tokens, &qkv, &inv_rms, norms.norms(), &mut out)
    })?;
    // Reads qkv (bf16), inv_rms, position and the RoPE rows (f32, cached); writes q, k, v.
    let bytes = timed.n as f64 * (w as f64 * 2.0 * 2.0 + 8.0);
    checks[0] = checks[0]
        .clone()
        .with_timing(timing(timed.describe(), us, bytes, 0.0));
    Ok(checks)
}

/// The attention block's Q, K, V from x = bf16(residual): the cuBLAS QKV GEMM followed by
/// `qkv_post` (the baseline), then `qkv_proj_wgmma` where the device runs it (sm_90), both
/// against the CPU twins (`linear`, then `qkv_post`'s) on the same bf16 inputs, and timed at the
/// same size. A fused kernel that fails to run is reported as a failed entry after the
/// baseline's results.
fn check_qkv_proj(dev: &Device, k: &Kernels, rng: &mut SplitMix64) -> Result<Vec<KernelCheck>> {
    let d = k.dims;
    let (h, w) = (d.hidden, d.qkv_width());
    // Weights like the folded real ones; x and r give q/k rows of a few units.
    let w_bits = rng.bf16s(w * h, -0.1, 0.1);
    let weight = dev.upload(&w_bits, "qkv weight")?;
    let norms = QkNormsCase::new(dev, &d, rng)?;
    let case = persistent_check_case(dev, qkv::BLOCK_M, d.num_heads + 2, 1);
    let n = case.n;
    let x_bits = rng.bf16s(n * h, -2.0, 2.0);
    let inv_rms_host = rng.f32s(n, 0.05, 2.0);
    let x = dev.upload(&x_bits, "x")?;
    let inv_rms = dev.upload(&inv_rms_host, "inv_rms")?;
    let tokens = case.device_tokens(dev, &vec![0; n])?;
    let mut qkv_f32 = vec![0.0f32; n * w];
    cpu::linear(
        &bf16_to_f32(&x_bits),
        &bf16_to_f32(&w_bits),
        h,
        w,
        &mut qkv_f32,
    );
    let references = norms.reference(&d, &qkv_f32, &inv_rms_host, &positions(&case.seq_offsets));
    let desc = format!("{} m={n} n={w} k={h}", case.describe());
    let run_baseline = |x: &CudaSlice<u16>,
                        r: &CudaSlice<f32>,
                        tokens: &Tokens,
                        qkv: &mut CudaSlice<u16>,
                        out: &mut QkvBuffers| {
        let rows = tokens.num_tokens;
        linear(dev, x, &weight, GemmOut::Bf16(qkv), (rows, w, h))?;
        k.qkv_post(dev, tokens, qkv, r, norms.norms(), out)
    };

    let timed = TokenCase::timed();
    let x_timed = dev.upload(&rng.bf16s(timed.n * h, -2.0, 2.0), "x")?;
    let inv_rms_timed = dev.upload(&rng.f32s(timed.n, 0.05, 2.0), "inv_rms")?;
    let tokens_timed = timed.device_tokens(dev, &vec![0; timed.n])?;
    let flops = (2 * timed.n * w * h) as f64;
    // x, the weights, inv_rms, positions and q, k, v once; the baseline also writes the
    // projection and qkv_post reads it back.
    let fused_bytes = ((timed.n * h + w * h + timed.n * w) * 2 + timed.n * 8) as f64;
    let baseline_bytes = fused_bytes + (timed.n * w * 2 * 2) as f64;
    let timed_case = format!("m={} n={w} k={h}", timed.n);

    let mut qkv = poisoned(dev, n * w, BF16_POISON, "qkv")?;
    let mut out = poisoned_qkv_buffers(dev, &d, n)?;
    run_baseline(&x, &inv_rms, &tokens, &mut qkv, &mut out)?;
    // cuBLAS rounds the projection to bf16 before qkv_post: one more rounding of up to 2^-9
    // relative, which the reference's f32 projection does not have.
    let baseline_tol = |reference: &[f32]| (2.0 * bf16_tol(reference).0, 1e-2);
    let mut checks = compare_qkv(
        dev,
        &d,
        ("qkv+qkv_post (cuBLAS)", &desc),
        &out,
        &references,
        baseline_tol,
    )?;
    let mut qkv = dev.alloc::<u16>(timed.n * w, "qkv")?;
    let mut out = poisoned_qkv_buffers(dev, &d, timed.n)?;
    let us = time_launches(dev, || {
        run_baseline(&x_timed, &inv_rms_timed, &tokens_timed, &mut qkv, &mut out)
    })?;
    checks[0] =
        checks[0]
            .clone()
            .with_timing(timing(timed_case.clone(), us, baseline_bytes, flops));

    for kernel in QkvKernel::all()
        .filter(|&k| k != QkvKernel::Cublas && k.runs_on(dev.info.compute_capability))
    {
        let fused = || -> Result<Vec<KernelCheck>> {
            let qkv_proj = QkvProj::load(dev, &d, kernel)?;
            let run =
                |x: &CudaSlice<u16>, r: &CudaSlice<f32>, tokens: &Tokens, out: &mut QkvBuffers| {
                    qkv_proj.launch(dev, &d, tokens, (x, &weight, r), norms.norms(), out)
                };
            let mut out = poisoned_qkv_buffers(dev, &d, n)?;
            run(&x, &inv_rms, &tokens, &mut out)?;
            let name = kernel.name();
            let mut fused_checks =
                compare_qkv(dev, &d, (name, &desc), &out, &references, bf16_tol)?;
            let mut out = poisoned_qkv_buffers(dev, &d, timed.n)?;
            let us = time_launches(dev, || {
                run(&x_timed, &inv_rms_timed, &tokens_timed, &mut out)
            })?;
            let l2_bytes = tiled_gemm_l2_bytes(timed.n, qkv::BLOCK_M, (w, qkv::HEAD_DIM), h);
            fused_checks[0] = fused_checks[0].clone().with_timing(
                timing(timed_case.clone(), us, fused_bytes, flops).with_l2_bytes(l2_bytes),
            );
            Ok(fused_checks)
        };
        match fused() {
            Ok(fused_checks) => checks.extend(fused_checks),
            Err(e) => checks.push(KernelCheck::error(kernel.name(), e.to_string())),
        }
    }
    Ok(checks)
}

/// The CPU twins of `geglu`: `gelu_tanh(r·gate)·(r·up)` per row of `gate_up`
/// (`[rows, 2·intermediate]`: gate, then up) with `r` its row's inverse RMS.
fn geglu_reference(gate_up: &[f32], inv_rms: &[f32], intermediate: usize) -> Vec<f32> {
    let i = intermediate;
    let rows = inv_rms.len();
    let (mut gate, mut up) = (Vec::with_capacity(rows * i), Vec::with_capacity(rows * i));
    for (row, &r) in gate_up.chunks_exact(2 * i).zip(inv_rms) {
        gate.extend(row[..i].iter().map(|&g| g * r));
        up.extend(row[i..].iter().map(|&u| u * r));
    }
    let mut reference = vec![0.0f32; rows * i];
    cpu::gelu_tanh_mul(&gate, &up, &mut reference);
    reference
}

fn check_geglu(dev: &Device, k: &Kernels, rng: &mut SplitMix64) -> Result<KernelCheck> {
    let d = k.dims;
    let i = d.intermediate;
    let case = TokenCase::new(CHECK_LENGTHS);
    let n = case.n;
    let gate_up_bits = rng.bf16s(n * 2 * i, -6.0, 6.0);
    let inv_rms_host = rng.f32s(n, 0.05, 2.0);
    let gate_up = dev.upload(&gate_up_bits, "gate_up")?;
    let inv_rms = dev.upload(&inv_rms_host, "inv_rms")?;
    let mut out = poisoned(dev, n * i, BF16_POISON, "geglu out")?;
    k.geglu(dev, n, &gate_up, &inv_rms, &mut out)?;

    let reference = geglu_reference(&bf16_to_f32(&gate_up_bits), &inv_rms_host, i);
    let got = bf16_to_f32(&download(dev, &out, n * i, "geglu out")?);
    let check = KernelCheck::compare(
        "geglu",
        case.describe(),
        &got,
        &round_bf16(&reference),
        bf16_tol(&reference),
    );

    let timed = TokenCase::timed();
    let gate_up = dev.upload(&rng.bf16s(timed.n * 2 * i, -6.0, 6.0), "gate_up")?;
    let inv_rms = dev.upload(&rng.f32s(timed.n, 0.05, 2.0), "inv_rms")?;
    let mut out = poisoned(dev, timed.n * i, BF16_POISON, "geglu out")?;
    let us = time_launches(dev, || k.geglu(dev, timed.n, &gate_up, &inv_rms, &mut out))?;
    let bytes = timed.n as f64 * (i as f64 * (4.0 + 2.0) + 4.0);
    Ok(check.with_timing(timing(timed.describe(), us, bytes, 0.0)))
}

/// The MLP's `gelu_tanh(r·gate)·(r·up)` from x = bf16(residual): the cuBLAS gate|up GEMM
/// followed by `geglu` (the baseline), then each fused kernel the device runs (`gate_up_geglu`;
/// `gate_up_geglu_wgmma` and `gate_up_geglu_wgmma_wide` on sm_90), all against the CPU twins (`linear`, then `gelu_tanh_mul`)
/// on the same bf16 inputs, and timed at the same size. A fused kernel that fails to run is
/// reported as a failed entry after the others' results.
fn check_gate_up_geglu(
    dev: &Device,
    k: &Kernels,
    rng: &mut SplitMix64,
) -> Result<Vec<KernelCheck>> {
    let d = k.dims;
    let (h, i) = (d.hidden, d.intermediate);
    // Weights like the folded real ones; x and r give gate and up values of a few units, where
    // GELU-tanh bends.
    let w_bits = rng.bf16s(2 * i * h, -0.1, 0.1);
    let w_interleaved = dev.upload(&interleave_gate_up(&w_bits, i, h), "gate|up interleaved")?;
    let w = dev.upload(&w_bits, "gate|up")?;
    let run_baseline = |x: &CudaSlice<u16>,
                        r: &CudaSlice<f32>,
                        n: usize,
                        gate_up: &mut CudaSlice<u16>,
                        out: &mut CudaSlice<u16>| {
        linear(dev, x, &w, GemmOut::Bf16(gate_up), (n, 2 * i, h))?;
        k.geglu(dev, n, gate_up, r, out)
    };

    // Odd row count: the last row block is partial. Enough row blocks that the persistent
    // kernels' CTAs (one per SM) walk more than one tile, even at the widest tiles.
    let col_blocks = i / mlp::WIDE_BLOCK_OUT;
    let mut m = GEMM_CHECK_ROWS;
    while m.div_ceil(mlp::BLOCK_M) * col_blocks <= dev.multiprocessors as usize {
        m += GEMM_CHECK_ROWS;
    }
    let x_bits = rng.bf16s(m * h, -2.0, 2.0);
    let inv_rms_host = rng.f32s(m, 0.05, 2.0);
    let x = dev.upload(&x_bits, "x")?;
    let inv_rms = dev.upload(&inv_rms_host, "inv_rms")?;
    let mut gate_up_f32 = vec![0.0f32; m * 2 * i];
    cpu::linear(
        &bf16_to_f32(&x_bits),
        &bf16_to_f32(&w_bits),
        h,
        2 * i,
        &mut gate_up_f32,
    );
    let reference = geglu_reference(&gate_up_f32, &inv_rms_host, i);
    let desc = format!("m={m} n={} k={h}", 2 * i);

    let timed = TokenCase::timed();
    let n = timed.n;
    let x_timed = dev.upload(&rng.bf16s(n * h, -2.0, 2.0), "x")?;
    let inv_rms_timed = dev.upload(&rng.f32s(n, 0.05, 2.0), "inv_rms")?;
    let flops = (2 * n * 2 * i * h) as f64;
    // x, the weights, inv_rms and the output once; the baseline also writes gate|up and
    // geglu reads it back.
    let fused_bytes = ((n * h + 2 * i * h + n * i) * 2 + n * 4) as f64;
    let baseline_bytes = fused_bytes + (n * 2 * i * 2 * 2) as f64;
    let timed_case = format!("m={n} n={} k={h}", 2 * i);

    let mut gate_up = poisoned(dev, m * 2 * i, BF16_POISON, "gate|up")?;
    let mut out = poisoned(dev, m * i, BF16_POISON, "geglu out")?;
    run_baseline(&x, &inv_rms, m, &mut gate_up, &mut out)?;
    let got = bf16_to_f32(&download(dev, &out, m * i, "cublas+geglu")?);
    // cuBLAS rounds gate and up to bf16 before geglu: two more roundings of up to 2^-9
    // relative each, whose errors do not cancel against the reference's f32 values.
    let (max_abs, _) = bf16_tol(&reference);
    let baseline_check = KernelCheck::compare(
        "gate_up+geglu (cuBLAS)",
        desc.clone(),
        &got,
        &round_bf16(&reference),
        (2.0 * max_abs, 1e-2),
    );
    let mut out = dev.alloc::<u16>(n * i, "out")?;
    let mut gate_up = dev.alloc::<u16>(n * 2 * i, "gate|up")?;
    let baseline_us = time_launches(dev, || {
        run_baseline(&x_timed, &inv_rms_timed, n, &mut gate_up, &mut out)
    })?;
    let mut checks = vec![baseline_check.with_timing(timing(
        timed_case.clone(),
        baseline_us,
        baseline_bytes,
        flops,
    ))];

    for kernel in MlpKernel::all()
        .filter(|&k| k != MlpKernel::Cublas && k.runs_on(dev.info.compute_capability))
    {
        let check = || -> Result<KernelCheck> {
            let fused = GateUpGeglu::load(dev, kernel)?;
            let run =
                |x: &CudaSlice<u16>, r: &CudaSlice<f32>, rows: usize, out: &mut CudaSlice<u16>| {
                    fused.launch(dev, (x, &w_interleaved, r), out, (rows, h, i))
                };
            let mut out = poisoned(dev, m * i, BF16_POISON, "fused out")?;
            run(&x, &inv_rms, m, &mut out)?;
            let got = bf16_to_f32(&download(dev, &out, m * i, kernel.name())?);
            let check = KernelCheck::compare_matrix(
                kernel.name(),
                desc.clone(),
                &got,
                &round_bf16(&reference),
                i,
                bf16_tol(&reference),
            );
            let mut out = dev.alloc::<u16>(n * i, "fused out")?;
            let us = time_launches(dev, || run(&x_timed, &inv_rms_timed, n, &mut out))?;
            let l2_bytes = tiled_gemm_l2_bytes(n, mlp::BLOCK_M, (2 * i, 2 * kernel.block_out()), h);
            Ok(check.with_timing(
                timing(timed_case.clone(), us, fused_bytes, flops).with_l2_bytes(l2_bytes),
            ))
        };
        checks.push(check().unwrap_or_else(|e| KernelCheck::error(kernel.name(), e.to_string())));
    }
    Ok(checks)
}

fn check_pool(dev: &Device, k: &Kernels, rng: &mut SplitMix64) -> Result<Vec<KernelCheck>> {
    let d = k.dims;
    let (h, e) = (d.hidden, d.embed_dim);
    let case = TokenCase::new(CHECK_LENGTHS);
    let n = case.n;
    let b = case.lengths.len();
    let residual_host = rng.f32s(n * h, -300.0, 300.0);
    let inv_rms_host = rng.f32s(n, 0.001, 0.02);
    let final_norm_host = rng.f32s(h, -1.0, 4.0);
    let dense_host = rng.f32s(e * h, -0.05, 0.05);
    let residual = Residual {
        x: dev.upload(&residual_host, "residual")?,
        x_bf16: dev.alloc(1, "unused bf16 residual")?,
        inv_rms: dev.upload(&inv_rms_host, "inv_rms")?,
    };
    let final_norm = dev.upload(&final_norm_host, "final norm")?;
    let dense = dev.upload(&dense_host, "dense")?;
    let tokens = case.device_tokens(dev, &vec![0; n])?;

    // Twins: final norm (with the given inverse RMS), mean pooling, Dense, L2 normalize;
    // Matryoshka truncation per output width below.
    let normed: Vec<f32> = residual_host
        .chunks_exact(h)
        .zip(&inv_rms_host)
        .flat_map(|(row, &r)| {
            row.iter()
                .zip(&final_norm_host)
                .map(move |(&x, &w)| x * r * (1.0 + w))
        })
        .collect();
    let mut pooled = vec![0.0f32; b * h];
    cpu::mean_pool(&normed, h, &case.seq_offsets, &mut pooled);
    let mut projected = vec![0.0f32; b * e];
    cpu::linear(&pooled, &dense_host, h, e, &mut projected);
    let full_norms = cpu::l2_normalize(&mut projected, e);

    let mut checks = Vec::new();
    for out_dim in [e, 128.min(e)] {
        let mut out = Pooled {
            embeddings: poisoned(dev, b * out_dim, F32_POISON, "embeddings")?,
            norms: poisoned(dev, b, F32_POISON, "embedding norms")?,
        };
        k.pool(
            dev,
            &tokens,
            &residual,
            (&final_norm, &dense),
            out_dim,
            &mut out,
        )?;
        let got = download(dev, &out.embeddings, b * out_dim, "embeddings")?;
        let (reference, kept_norms) = cpu::truncate_normalize(&projected, e, out_dim);
        let name = format!("pool_embeddings/d{out_dim}");
        checks.push(KernelCheck::compare(
            &name,
            case.describe(),
            &got,
            &reference,
            (1e-5, 1e-5),
        ));
        // What takes each row back to the Dense output (TEI's `normalize: false`): the full
        // row's norm times the kept part's, so relative to the full norm it is the kept part's.
        let got_norms = download(dev, &out.norms, b, "embedding norms")?;
        let relative: Vec<f32> = got_norms
            .iter()
            .zip(&full_norms)
            .map(|(n, f)| n / f)
            .collect();
        checks.push(KernelCheck::compare(
            &format!("{name}/norms"),
            case.describe(),
            &relative,
            &kept_norms,
            (1e-5, 1e-5),
        ));
    }

    let timed = TokenCase::timed();
    let residual = Residual {
        x: dev.upload(&rng.f32s(timed.n * h, -300.0, 300.0), "residual")?,
        x_bf16: dev.alloc(1, "unused bf16 residual")?,
        inv_rms: dev.upload(&rng.f32s(timed.n, 0.001, 0.02), "inv_rms")?,
    };
    let tokens = timed.device_tokens(dev, &vec![0; timed.n])?;
    let tb = timed.lengths.len();
    let mut out = Pooled {
        embeddings: poisoned(dev, tb * e, F32_POISON, "embeddings")?,
        norms: poisoned(dev, tb, F32_POISON, "embedding norms")?,
    };
    let us = time_launches(dev, || {
        k.pool(dev, &tokens, &residual, (&final_norm, &dense), e, &mut out)
    })?;
    // The residual once from memory, the Dense matrix once per sequence (L2 after the first).
    let bytes = timed.n as f64 * (h as f64 * 4.0 + 4.0) + (tb * e * h * 4) as f64;
    let flops = (2 * tb * e * h) as f64;
    checks[0] = checks[0]
        .clone()
        .with_timing(timing(timed.describe(), us, bytes, flops));
    Ok(checks)
}

/// The four projections' shapes: (name, out features, in features, f32 output).
fn gemm_shapes(d: &ModelDims) -> [(&'static str, usize, usize, bool); 4] {
    [
        ("gemm/qkv", d.qkv_width(), d.hidden, false),
        ("gemm/o", d.hidden, d.q_width(), true),
        ("gemm/gate_up", 2 * d.intermediate, d.hidden, false),
        ("gemm/down", d.hidden, d.intermediate, true),
    ]
}

/// Rows of the checked GEMMs (odd, so no tile divides it).
const GEMM_CHECK_ROWS: usize = 257;

fn check_gemms(dev: &Device, rng: &mut SplitMix64) -> Result<Vec<KernelCheck>> {
    let d = check_dims();
    let mut checks = Vec::new();
    for (name, n, kk, f32_out) in gemm_shapes(&d) {
        let m = GEMM_CHECK_ROWS;
        let a_bits = rng.bf16s(m * kk, -2.0, 2.0);
        let w_bits = rng.bf16s(n * kk, -0.1, 0.1);
        let a = dev.upload(&a_bits, "gemm a")?;
        let w = dev.upload(&w_bits, "gemm w")?;
        let mut reference = vec![0.0f32; m * n];
        cpu::linear(
            &bf16_to_f32(&a_bits),
            &bf16_to_f32(&w_bits),
            kk,
            n,
            &mut reference,
        );
        let desc = format!("m={m} n={n} k={kk}");
        let check = if f32_out {
            let mut out = poisoned(dev, m * n, F32_POISON, "gemm out")?;
            linear(dev, &a, &w, GemmOut::F32(&mut out), (m, n, kk))?;
            let got = download(dev, &out, m * n, name)?;
            // f32 accumulation of k products; cuBLAS may split k.
            let max = reference.iter().fold(0.0f32, |acc, v| acc.max(v.abs())) as f64;
            KernelCheck::compare(name, desc, &got, &reference, (max * 1e-4, 1e-4))
        } else {
            let mut out = poisoned(dev, m * n, BF16_POISON, "gemm out")?;
            linear(dev, &a, &w, GemmOut::Bf16(&mut out), (m, n, kk))?;
            let got = bf16_to_f32(&download(dev, &out, m * n, name)?);
            KernelCheck::compare(
                name,
                desc,
                &got,
                &round_bf16(&reference),
                bf16_tol(&reference),
            )
        };

        let tm = TIMED_TOKENS;
        let a = dev.upload(&rng.bf16s(tm * kk, -2.0, 2.0), "gemm a")?;
        let out_bytes = if f32_out { 4.0 } else { 2.0 };
        let us = if f32_out {
            let mut out = dev.alloc::<f32>(tm * n, "gemm out")?;
            time_launches(dev, || {
                linear(dev, &a, &w, GemmOut::F32(&mut out), (tm, n, kk))
            })?
        } else {
            let mut out = dev.alloc::<u16>(tm * n, "gemm out")?;
            time_launches(dev, || {
                linear(dev, &a, &w, GemmOut::Bf16(&mut out), (tm, n, kk))
            })?
        };
        let bytes = ((tm * kk + n * kk) * 2) as f64 + (tm * n) as f64 * out_bytes;
        let flops = (2 * tm * n * kk) as f64;
        checks.push(check.with_timing(timing(format!("m={tm} n={n} k={kk}"), us, bytes, flops)));
    }
    Ok(checks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_launch_matches_params_header() {
        let define = |name: &str| super::super::params_define(name) as u32;
        assert_eq!(define("L2_PROBE_THREADS"), L2_PROBE_THREADS);
    }

    #[test]
    fn a_family_draws_the_same_inputs_alone_as_in_the_full_run() {
        let draws = |seed, family| {
            let mut rng = family_rng(seed, family);
            [rng.next_u64(), rng.next_u64()]
        };
        assert_eq!(draws(7, "gate_up_geglu"), draws(7, "gate_up_geglu"));
        assert_ne!(draws(7, "gate_up_geglu"), draws(8, "gate_up_geglu"));
        let firsts: std::collections::HashSet<_> = CheckFamily::ALL
            .iter()
            .map(|f| draws(7, f.name()))
            .collect();
        assert_eq!(firsts.len(), CheckFamily::ALL.len(), "families draw apart");
    }

    #[test]
    fn operand_bytes_count_every_cta_slab() {
        // 130 rows: two row blocks of 128 (the second partial, loaded whole); 512 weight rows in
        // two CTA blocks of 256; each CTA loads 128 + 256 rows of k = 64 bf16.
        assert_eq!(
            tiled_gemm_l2_bytes(130, 128, (512, 256), 64),
            (4 * (128 + 256) * 64 * 2) as f64
        );
        assert_eq!(tiled_gemm_l2_bytes(0, 128, (512, 256), 64), 0.0);
    }
}
