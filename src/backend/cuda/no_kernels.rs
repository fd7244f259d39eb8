//! Stand-in for a binary built without nvcc: same API, every entry point reports that the
//! kernels are missing and how to rebuild.

use super::profile::OpTimes;
use super::{CudaOptions, DeviceInfo, KernelCheck, KernelChecks};
use crate::backend::{Backend, Batch, Embeddings};
use crate::model::Model;
use crate::{Error, Result};

/// Cannot be constructed in a build without kernels.
pub enum CudaBackend {}

impl CudaBackend {
    pub fn new(_model: &Model) -> Result<Self> {
        Err(Error::NoCudaKernels)
    }

    pub fn with_options(_model: &Model, _options: CudaOptions) -> Result<Self> {
        Err(Error::NoCudaKernels)
    }

    pub fn options(&self) -> CudaOptions {
        match *self {}
    }

    pub fn start_profiling(&mut self) {
        match *self {}
    }

    pub fn stop_profiling(&mut self) -> Option<OpTimes> {
        match *self {}
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        match *self {}
    }

    fn forward(&mut self, _batch: &Batch, _dimensions: usize) -> Result<Embeddings> {
        match *self {}
    }
}

pub fn probe() -> Result<DeviceInfo> {
    Err(Error::NoCudaKernels)
}

pub fn run_kernel_checks(
    _seed: u64,
    _only: &[String],
    _progress: &mut dyn FnMut(&[KernelCheck]) -> Result<()>,
) -> Result<KernelChecks> {
    Err(Error::NoCudaKernels)
}
