/* params.h: the one definition of every kernel's parameter struct.
 *
 * Included by the kernels (nvcc) and turned into Rust by bindgen in build.rs, so host and
 * device cannot disagree on layout. Each struct is passed to its kernel by value.
 * Pointers are device addresses; bf16 data is typed `bf16_t` (uint16_t on the host side).
 */
#ifndef GEMMA_EMBED_PARAMS_H
#define GEMMA_EMBED_PARAMS_H

#include <stdint.h>

#ifdef __CUDACC__
#include <cuda_bf16.h>
typedef __nv_bfloat16 bf16_t;
#else
typedef uint16_t bf16_t;
#endif

/* ---- attention (kernels/attention.cu) ---------------------------------------------- */

/* ---- other kernels ------------------------------------------------------------------ */

#endif /* GEMMA_EMBED_PARAMS_H */
