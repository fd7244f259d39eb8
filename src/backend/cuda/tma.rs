//! TMA tensor maps: how the kernels that fill shared memory with `cp.async.bulk.tensor`
//! (`gate_up_geglu_tma`, `qkv_proj_tma`, `proj_residual_norm_tma`, `attention_flash_tma`) see a
//! bf16 matrix in global memory; their launches, and the register hand-over of those that
//! `setmaxnreg`.

use std::ffi::c_void;
use std::mem::MaybeUninit;

use cudarc::driver::{
    sys, CudaFunction, CudaStream, DeviceRepr, DriverError, LaunchConfig, PushKernelArg,
};

use super::attention::{GROUP, HEAD_DIM};
use super::params::{AttentionTensorMaps, GemmTensorMaps, TensorMap};
use super::qkv::TILE_K;
use super::RegisterHandOver;
use crate::{Error, Result};

// SAFETY: bindgen's `#[repr(C)]` copy of `GemmTensorMaps` (two 128-byte aligned CUtensorMap
// images), passed by value; the kernels read it as a __grid_constant__ parameter.
unsafe impl cudarc::driver::DeviceRepr for GemmTensorMaps {}
// SAFETY: as GemmTensorMaps, with three maps; `attention_flash_tma`'s second parameter.
unsafe impl cudarc::driver::DeviceRepr for AttentionTensorMaps {}

/// Enqueue `func` on `stream` with `params` and, for a TMA kernel, its tensor maps as the second
/// parameter.
///
/// # Safety
/// As cudarc's `launch`: `params` (and `maps`) are exactly the kernel's parameters, and every
/// device address in them is valid for what the kernel touches with this `cfg` until the launch
/// is enqueued.
pub unsafe fn launch_with_maps<P: DeviceRepr, M: DeviceRepr>(
    stream: &CudaStream,
    func: &CudaFunction,
    cfg: LaunchConfig,
    params: &P,
    maps: Option<&M>,
) -> std::result::Result<(), DriverError> {
    let mut launch = stream.launch_builder(func);
    launch.arg(params);
    if let Some(maps) = maps {
        launch.arg(maps);
    }
    // SAFETY: the caller's contract above.
    unsafe { launch.launch(cfg) }.map(|_events| ())
}

/// Whether `func` (kernel `name`) was compiled to enough registers per thread for its
/// setmaxnreg `hand_over`; if not, why its launch would hang, ending with `way_out`.
pub fn check_hand_over(
    func: &CudaFunction,
    name: &str,
    hand_over: RegisterHandOver,
    way_out: &str,
) -> std::result::Result<(), String> {
    let registers = func
        .num_regs()
        .map_err(|e| format!("read {name}'s register count: {e}"))?;
    let registers = usize::try_from(registers).unwrap_or(0);
    if hand_over.fits(registers) {
        Ok(())
    } else {
        Err(format!(
            "{name} was compiled to {registers} registers per thread, too few for its \
             setmaxnreg hand-over ({} producer, {} consumer); {way_out}",
            hand_over.producer, hand_over.consumer
        ))
    }
}

/// Rows and dims of one attention TMA box: a 64 x 64 segment of attn_wgmma_swizzle
/// (kernels/attention.cuh).
const ATTENTION_BOX: usize = 64;

/// Bytes of the 128-byte swizzle's rows: a box's row must span exactly one.
const SWIZZLE_BYTES: usize = 128;
/// The most rows (elements of any dimension) a TMA box may have.
const MAX_BOX_ROWS: usize = 256;

/// Refuse what the TMA unit cannot read as a [`tensor_map_bf16`] box.
fn check_box(ptr: u64, rows: usize, cols: usize, box_rows: usize, box_cols: usize) -> Result<()> {
    let problem = if box_cols * 2 != SWIZZLE_BYTES {
        Some(format!(
            "a box row of {box_cols} bf16 is not the swizzle's {SWIZZLE_BYTES} bytes"
        ))
    } else if box_rows == 0 || box_rows > MAX_BOX_ROWS {
        Some(format!("a box of {box_rows} rows (1..={MAX_BOX_ROWS})"))
    } else if rows == 0 || cols == 0 || !cols.is_multiple_of(box_cols) {
        Some(format!("{cols} columns are not whole boxes of {box_cols}"))
    } else if !ptr.is_multiple_of(16) {
        Some(format!("address {ptr:#x} is not 16-byte aligned"))
    } else {
        None
    };
    match problem {
        Some(p) => Err(Error::Cuda(format!(
            "TMA map of a [{rows}, {cols}] bf16 matrix: {p}"
        ))),
        None => Ok(()),
    }
}

/// The second parameter of a TMA GEMM kernel (gemm_pipeline.cuh's `wgmma_gemm_tma_persistent`):
/// x `[x_rows, k]` at device address `x` in boxes of `block_m` rows, w `[w_rows, k]` at `w` in
/// boxes of `weight_rows` rows, both `GEMM_TILE_K` wide.
pub fn gemm_tensor_maps(
    (x, x_rows): (u64, usize),
    (w, w_rows): (u64, usize),
    k: usize,
    (block_m, weight_rows): (usize, usize),
) -> Result<GemmTensorMaps> {
    Ok(GemmTensorMaps {
        x: tensor_map_bf16(x, x_rows, k, block_m, TILE_K)?,
        w: tensor_map_bf16(w, w_rows, k, weight_rows, TILE_K)?,
    })
}

/// The second parameter of `attention_flash_tma`: q `[num_tokens * GROUP, HEAD_DIM]` and k, v
/// `[num_tokens, HEAD_DIM]` at these device addresses, in boxes of 64 rows x 64 dims.
pub fn attention_tensor_maps(
    (q, k, v): (u64, u64, u64),
    num_tokens: usize,
) -> Result<AttentionTensorMaps> {
    let rows = |ptr, rows| tensor_map_bf16(ptr, rows, HEAD_DIM, ATTENTION_BOX, ATTENTION_BOX);
    Ok(AttentionTensorMaps {
        q: rows(q, num_tokens * GROUP)?,
        k: rows(k, num_tokens)?,
        v: rows(v, num_tokens)?,
    })
}

/// The map of the row-major bf16 matrix `[rows, cols]` at device address `ptr`, read in boxes
/// of `box_rows` x `box_cols` (one 128-byte row each) that land in shared memory in the 128-byte
/// swizzle (kernels/tile.cuh's `tile_swizzle` on a 1024-byte aligned tile, what
/// `wgmma_desc_sw128` addresses); rows past `rows` read as zeros.
fn tensor_map_bf16(
    ptr: u64,
    rows: usize,
    cols: usize,
    box_rows: usize,
    box_cols: usize,
) -> Result<TensorMap> {
    check_box(ptr, rows, cols, box_rows, box_cols)?;
    let dims = [cols as u64, rows as u64];
    let row_stride_bytes = [(cols * 2) as u64];
    let box_dims = [box_cols as u32, box_rows as u32];
    let element_strides = [1u32, 1];
    let mut map = MaybeUninit::<sys::CUtensorMap>::uninit();
    // SAFETY: `map` is writable storage for one CUtensorMap; dims, box_dims and element_strides
    // hold rank (2) entries and row_stride_bytes rank - 1, all alive for the call, which only
    // encodes the map on the host and reads no device memory.
    let status = unsafe {
        sys::cuTensorMapEncodeTiled(
            map.as_mut_ptr(),
            sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            2,
            ptr as *mut c_void,
            dims.as_ptr(),
            row_stride_bytes.as_ptr(),
            box_dims.as_ptr(),
            element_strides.as_ptr(),
            sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    };
    if status != sys::CUresult::CUDA_SUCCESS {
        return Err(Error::Cuda(format!(
            "cuTensorMapEncodeTiled for a [{rows}, {cols}] bf16 matrix in boxes of {box_rows} x \
             {box_cols}: {status:?}"
        )));
    }
    // SAFETY: the driver wrote the whole map on success.
    let map = unsafe { map.assume_init() };
    Ok(TensorMap { opaque: map.opaque })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_the_tma_unit_cannot_read_are_refused() {
        assert!(check_box(0x1000, 100, 768, 128, 64).is_ok());
        assert!(check_box(0x1000, 2304, 768, 256, 64).is_ok());
        for (ptr, rows, cols, box_rows, box_cols, what) in [
            (0x1000, 100, 768, 128, 32, "not the swizzle's 128 bytes"),
            (0x1000, 100, 768, 512, 64, "a box of 512 rows"),
            (0x1000, 100, 768, 0, 64, "a box of 0 rows"),
            (0x1000, 100, 800, 128, 64, "800 columns"),
            (0x1000, 0, 768, 128, 64, "768 columns"),
            (0x1008, 100, 768, 128, 64, "not 16-byte aligned"),
        ] {
            let err = check_box(ptr, rows, cols, box_rows, box_cols)
                .unwrap_err()
                .to_string();
            assert!(err.contains(what), "{err}");
        }
    }
}
