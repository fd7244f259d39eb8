//! The backend boundary: a backend sees only a packed, ragged [`Batch`] and returns one
//! L2-normalized embedding per sequence.

pub mod cpu;
pub mod cuda;

use std::str::FromStr;
use std::sync::Arc;

use crate::model::Model;
use crate::{Error, Result};

/// Variable-length sequences packed back to back, no padding.
///
/// `ids[seq_offsets[s]..seq_offsets[s + 1]]` are the token ids of sequence `s`; the position
/// of a token is its index inside its own sequence (positions restart at 0 per sequence).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub ids: Vec<u32>,
    /// `n_seq + 1` cumulative offsets into `ids`, starting at 0 and ending at `ids.len()`.
    pub seq_offsets: Vec<u32>,
}

impl Batch {
    /// Pack the given sequences in order.
    pub fn from_sequences<S: AsRef<[u32]>>(sequences: &[S]) -> Self {
        let mut batch = Batch {
            ids: Vec::new(),
            seq_offsets: vec![0],
        };
        for seq in sequences {
            batch.push(seq.as_ref());
        }
        batch
    }

    pub fn push(&mut self, seq: &[u32]) {
        if self.seq_offsets.is_empty() {
            self.seq_offsets.push(0);
        }
        self.ids.extend_from_slice(seq);
        self.seq_offsets.push(self.ids.len() as u32);
    }

    pub fn num_sequences(&self) -> usize {
        self.seq_offsets.len().saturating_sub(1)
    }

    pub fn num_tokens(&self) -> usize {
        self.ids.len()
    }

    pub fn sequence(&self, s: usize) -> &[u32] {
        &self.ids[self.seq_offsets[s] as usize..self.seq_offsets[s + 1] as usize]
    }

    pub fn max_sequence_len(&self) -> usize {
        self.seq_offsets
            .windows(2)
            .map(|w| (w[1] - w[0]) as usize)
            .max()
            .unwrap_or(0)
    }

    /// Position of every token inside its own sequence.
    pub fn positions(&self) -> Vec<u32> {
        let mut positions = Vec::with_capacity(self.ids.len());
        for w in self.seq_offsets.windows(2) {
            positions.extend(0..w[1] - w[0]);
        }
        positions
    }

    /// Check the invariants a backend relies on: offsets well formed, every sequence
    /// non-empty and at most `max_len` long, every id below `vocab_size`.
    pub fn validate(&self, vocab_size: usize, max_len: usize) -> Result<()> {
        if self.seq_offsets.first() != Some(&0)
            || *self.seq_offsets.last().unwrap_or(&0) as usize != self.ids.len()
        {
            return Err(Error::Batch(format!(
                "sequence offsets must run from 0 to {}",
                self.ids.len()
            )));
        }
        for (s, w) in self.seq_offsets.windows(2).enumerate() {
            let len = w[1].checked_sub(w[0]).ok_or_else(|| {
                Error::Batch(format!(
                    "sequence {s}: offsets decrease ({} > {})",
                    w[0], w[1]
                ))
            })? as usize;
            if len == 0 || len > max_len {
                return Err(Error::Batch(format!(
                    "sequence {s}: length {len} outside 1..={max_len}"
                )));
            }
        }
        if let Some((i, id)) = self
            .ids
            .iter()
            .enumerate()
            .find(|(_, &id)| id as usize >= vocab_size)
        {
            return Err(Error::Batch(format!(
                "token {i}: id {id} is outside the vocabulary (size {vocab_size})"
            )));
        }
        Ok(())
    }
}

/// Row-major `[num_sequences, dim]` float32 embeddings, each row L2-normalized.
#[derive(Clone, Debug, PartialEq)]
pub struct Embeddings {
    pub dim: usize,
    pub data: Vec<f32>,
    /// Per row, what it was divided by: row * norm is the model's output before its Normalize
    /// module (the Dense projection's first `dim` components), as TEI's `normalize: false` asks.
    pub norms: Vec<f32>,
}

impl Embeddings {
    pub fn rows(&self) -> impl Iterator<Item = &[f32]> {
        self.data.chunks_exact(self.dim)
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    pub fn len(&self) -> usize {
        self.data.len() / self.dim.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// A device that runs the whole model over a packed batch.
pub trait Backend: Send {
    /// Short name for logs and reports: `cpu` or `cuda`.
    fn name(&self) -> &'static str;

    /// The device it runs on, for reports (a GPU's name); `None` for the host CPU.
    fn device_name(&self) -> Option<String> {
        None
    }

    /// Device memory in use now, in bytes (the whole device, as the driver reports it), for
    /// the bench's peak-memory figure; `None` for the host CPU.
    fn device_memory_used(&self) -> Option<u64> {
        None
    }

    /// Embed every sequence of `batch`: mean pooling, Dense projections, L2 normalization and
    /// Matryoshka truncation to `dimensions` (then renormalized).
    fn forward(&mut self, batch: &Batch, dimensions: usize) -> Result<Embeddings>;
}

/// Which backend to run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendKind {
    /// CUDA when this build has it and a device is present, else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

impl FromStr for BackendKind {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda),
            _ => Err(format!("`{s}` is not a backend (auto, cpu or cuda)")),
        }
    }
}

/// The backends compiled into this build.
pub fn available_backends() -> Vec<&'static str> {
    if cuda::EMBEDDED_ARCHS.is_empty() {
        vec!["cpu"]
    } else {
        vec!["cpu", "cuda"]
    }
}

/// Open a backend for `model`; also returns a one-line note on what was chosen and why.
pub fn open(kind: BackendKind, model: Arc<Model>) -> Result<(Box<dyn Backend>, String)> {
    match kind {
        BackendKind::Cpu => Ok((
            Box::new(cpu::CpuBackend::new(model)?),
            "cpu (requested)".into(),
        )),
        BackendKind::Cuda => {
            let backend = cuda::CudaBackend::new(&model)?;
            let note = format!(
                "cuda (requested): {}",
                backend.device_name().unwrap_or_default()
            );
            Ok((Box::new(backend), note))
        }
        BackendKind::Auto => match cuda::CudaBackend::new(&model) {
            Ok(backend) => {
                let note = format!("cuda (auto): {}", backend.device_name().unwrap_or_default());
                Ok((Box::new(backend), note))
            }
            Err(e) => Ok((
                Box::new(cpu::CpuBackend::new(model)?),
                format!("cpu (auto: CUDA unavailable: {e})"),
            )),
        },
    }
}
