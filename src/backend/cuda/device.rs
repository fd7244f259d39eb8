//! The device: CUDA context and stream, cuBLAS handle, and the kernels of the embedded fatbins.
//!
//! Opening never panics when the driver, a device or cuBLAS is missing: cudarc's dynamic loader
//! panics on a missing library, so every library is probed first and the first driver calls
//! run under `catch_unwind`.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::cublas::CudaBlas;
use cudarc::driver::{
    sys, CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr, LaunchConfig,
};
use cudarc::nvrtc::Ptx;

use super::DeviceInfo;
use crate::{Error, Result};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

/// Oldest architecture the kernels support (bf16 mma.sync, cp.async).
const MIN_COMPUTE_CAPABILITY: (i32, i32) = (8, 0);

/// cuBLAS as the cudarc `cuda-13000` build loads it (it pulls in `libcublasLt.so.13`).
const CUBLAS_LIBRARY: &str = "libcublas.so.13";

pub(crate) fn driver_err(
    what: impl Into<String>,
) -> impl FnOnce(cudarc::driver::DriverError) -> Error {
    let what = what.into();
    move |source| Error::CudaDriver { what, source }
}

pub(crate) fn cublas_err(
    what: impl Into<String>,
) -> impl FnOnce(cudarc::cublas::result::CublasError) -> Error {
    let what = what.into();
    move |source| Error::Cublas { what, source }
}

pub struct Device {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub blas: CudaBlas,
    /// Its name and compute capability.
    pub info: DeviceInfo,
    /// Streaming multiprocessors: the grid of the persistent kernels (one CTA each).
    pub multiprocessors: u32,
    modules: Vec<(&'static str, Arc<CudaModule>)>,
    functions: std::sync::Mutex<HashMap<String, CudaFunction>>,
}

impl Device {
    /// Launch `func` on the stream with `params` as its by-value argument and, for a TMA
    /// kernel, its tensor maps as the second, in clusters of `cluster_x` CTAs along x:
    /// `cuLaunchKernelEx` with a cluster-dimension attribute (sm_90 and later; cudarc's launch
    /// builder has no cluster launch).
    ///
    /// # Safety
    /// As for any kernel launch: `P` (and `M`) are the kernel's parameter types, every device
    /// address in `params` (and `maps`) covers what the kernel accesses for the shapes in it
    /// and stays alive until the kernel has run, and `cfg.grid_dim.0` is a multiple of
    /// `cluster_x`.
    pub unsafe fn launch_clustered<P: DeviceRepr, M: DeviceRepr>(
        &self,
        (func, name): (&CudaFunction, &str),
        cfg: LaunchConfig,
        cluster_x: u32,
        params: &P,
        maps: Option<&M>,
    ) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(driver_err(format!("bind the context to launch {name}")))?;
        let mut cluster = cluster_attribute(cluster_x);
        let config = self.cluster_launch_config(cfg, &mut cluster);
        // The driver reads as many entries as the kernel has parameters: the second only for a
        // TMA kernel.
        let mut args = [
            params as *const P as *mut std::ffi::c_void,
            maps.map_or(std::ptr::null_mut(), |m| {
                m as *const M as *mut std::ffi::c_void
            }),
        ];
        sys::cuLaunchKernelEx(
            &config,
            func.cu_function(),
            args.as_mut_ptr(),
            std::ptr::null_mut(),
        )
        .result()
        .map_err(driver_err(format!(
            "launch {name} in clusters of {cluster_x}"
        )))
    }

    /// How many clusters of `cluster_x` CTAs of `func` (block and shared memory as in `cfg`)
    /// the device runs at once (`cuOccupancyMaxActiveClusters`): the grid of a persistent
    /// clustered kernel.
    pub fn max_active_clusters(
        &self,
        (func, name): (&CudaFunction, &str),
        cfg: LaunchConfig,
        cluster_x: u32,
    ) -> Result<u32> {
        self.ctx.bind_to_thread().map_err(driver_err(format!(
            "bind the context to size {name}'s grid"
        )))?;
        let mut cluster = cluster_attribute(cluster_x);
        let config = self.cluster_launch_config(cfg, &mut cluster);
        let mut clusters: std::ffi::c_int = 0;
        // SAFETY: a query: `config` and its attribute live across the call, and `clusters` is
        // a valid place for the result.
        unsafe { sys::cuOccupancyMaxActiveClusters(&mut clusters, func.cu_function(), &config) }
            .result()
            .map_err(driver_err(format!(
                "count the clusters of {cluster_x} {name} CTAs the device runs at once"
            )))?;
        u32::try_from(clusters)
            .ok()
            .filter(|&c| c > 0)
            .ok_or_else(|| {
                Error::Cuda(format!(
                    "{} cannot run a cluster of {cluster_x} {name} CTAs ({} threads, {} bytes \
                     of dynamic shared memory each)",
                    self.info.description, cfg.block_dim.0, cfg.shared_mem_bytes
                ))
            })
    }

    /// `cfg` on this device's stream with `cluster` as its one launch attribute.
    fn cluster_launch_config(
        &self,
        cfg: LaunchConfig,
        cluster: &mut sys::CUlaunchAttribute,
    ) -> sys::CUlaunchConfig {
        sys::CUlaunchConfig {
            gridDimX: cfg.grid_dim.0,
            gridDimY: cfg.grid_dim.1,
            gridDimZ: cfg.grid_dim.2,
            blockDimX: cfg.block_dim.0,
            blockDimY: cfg.block_dim.1,
            blockDimZ: cfg.block_dim.2,
            sharedMemBytes: cfg.shared_mem_bytes,
            hStream: self.stream.cu_stream(),
            attrs: cluster,
            numAttrs: 1,
        }
    }

    /// Kernel `name` allowed `smem_bytes` of dynamic shared memory (more than the default
    /// 48 KB); `fallback` tells the user what to run instead where the device cannot.
    pub fn function_with_shared_memory(
        &self,
        name: &str,
        smem_bytes: usize,
        fallback: &str,
    ) -> Result<CudaFunction> {
        let func = self.function(name)?;
        func.set_attribute(
            sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            smem_bytes as i32,
        )
        .map_err(driver_err(format!(
            "allow {smem_bytes} bytes of dynamic shared memory for {name} (the device's \
             per-block opt-in limit is lower; {fallback})"
        )))?;
        Ok(func)
    }

    /// Open device 0 and load every embedded kernel module.
    pub fn open() -> Result<Self> {
        // SAFETY: only probes whether the driver library can be dlopen'ed.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(Error::Cuda(
                "the NVIDIA driver library libcuda.so could not be loaded (no driver on this \
                 machine, or it is not on the library path)"
                    .into(),
            ));
        }
        let (ctx, info) = quietly("CUDA driver initialization", open_context)??;
        // One stream and no cross-stream event tracking: the backend orders its work itself.
        // SAFETY: called before any allocation or launch on this context.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(driver_err("create stream"))?;

        if let Err(e) = unsafe { libloading::Library::new(CUBLAS_LIBRARY) } {
            return Err(Error::Cuda(format!(
                "cuBLAS could not be loaded ({e}); put the directory holding {CUBLAS_LIBRARY} \
                 and libcublasLt.so.13 on LD_LIBRARY_PATH"
            )));
        }
        let blas = quietly("cuBLAS initialization", || {
            CudaBlas::new(stream.clone()).map_err(cublas_err("create cuBLAS handle"))
        })??;
        // Split-K partial sums in f32 even when the output is bf16 (cuBLAS may otherwise reduce
        // in the output type).
        // SAFETY: a live handle; the mode is a plain enum value.
        unsafe {
            cudarc::cublas::sys::cublasSetMathMode(
                *blas.handle(),
                cudarc::cublas::sys::cublasMath_t::CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION,
            )
        }
        .result()
        .map_err(cublas_err("set math mode"))?;

        let multiprocessors = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(driver_err("count the multiprocessors"))?;
        let multiprocessors = u32::try_from(multiprocessors).unwrap_or(1).max(1);

        let mut modules = Vec::with_capacity(embedded::FATBINS.len());
        for (name, image) in embedded::FATBINS {
            let module = ctx
                .load_module(Ptx::from_binary(image.to_vec()))
                .map_err(driver_err(format!("load kernel module {name}.cu")))?;
            modules.push((*name, module));
        }
        Ok(Self {
            ctx,
            stream,
            blas,
            info,
            multiprocessors,
            modules,
            functions: Default::default(),
        })
    }

    /// Look a kernel up by its `extern "C"` name in the embedded modules.
    pub fn function(&self, name: &str) -> Result<CudaFunction> {
        let mut cache = self.functions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = cache.get(name) {
            return Ok(f.clone());
        }
        let found = self
            .modules
            .iter()
            .find_map(|(_, module)| module.load_function(name).ok())
            .ok_or_else(|| {
                let files: Vec<_> = self.modules.iter().map(|(n, _)| *n).collect();
                Error::Cuda(format!(
                    "kernel `{name}` is not in the embedded modules ({})",
                    files.join(", ")
                ))
            })?;
        cache.insert(name.to_string(), found.clone());
        Ok(found)
    }

    pub fn alloc<T: DeviceRepr>(&self, len: usize, what: &str) -> Result<CudaSlice<T>> {
        // SAFETY: every buffer is written by a kernel or a copy before it is read.
        unsafe { self.stream.alloc::<T>(len.max(1)) }
            .map_err(driver_err(format!("allocate {what} ({len} elements)")))
    }

    pub fn upload<T: DeviceRepr>(&self, data: &[T], what: &str) -> Result<CudaSlice<T>> {
        self.stream
            .clone_htod(data)
            .map_err(driver_err(format!("upload {what}")))
    }

    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(driver_err("synchronize"))
    }
}

/// The launch attribute for clusters of `cluster_x` CTAs along x.
fn cluster_attribute(cluster_x: u32) -> sys::CUlaunchAttribute {
    // SAFETY: a plain C union of integers; all zero is a valid value of every member.
    let mut value: sys::CUlaunchAttributeValue = unsafe { std::mem::zeroed() };
    value.clusterDim.x = cluster_x;
    value.clusterDim.y = 1;
    value.clusterDim.z = 1;
    sys::CUlaunchAttribute {
        id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION,
        pad: [0; 4],
        value,
    }
}

fn open_context() -> Result<(Arc<CudaContext>, DeviceInfo)> {
    let count = CudaContext::device_count().map_err(driver_err("count devices"))?;
    if count < 1 {
        return Err(Error::Cuda("no CUDA device found".into()));
    }
    let ctx = CudaContext::new(0).map_err(driver_err("create context on device 0"))?;
    let name = ctx.name().map_err(driver_err("device name"))?;
    let (major, minor) = ctx
        .compute_capability()
        .map_err(driver_err("compute capability"))?;
    if (major, minor) < MIN_COMPUTE_CAPABILITY {
        return Err(Error::Cuda(format!(
            "{name} has compute capability {major}.{minor}; the kernels need {}.{} or newer",
            MIN_COMPUTE_CAPABILITY.0, MIN_COMPUTE_CAPABILITY.1
        )));
    }
    let info = DeviceInfo {
        description: format!("{name} (sm_{major}{minor})"),
        compute_capability: (major, minor),
    };
    Ok((ctx, info))
}

/// Run `f`, turning a panic inside cudarc's loader (a missing library or symbol) into an error,
/// without the default hook printing it.
fn quietly<T>(what: &str, f: impl FnOnce() -> T) -> Result<T> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    result.map_err(|payload| {
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        Error::Cuda(format!("{what} failed: {message}"))
    })
}
