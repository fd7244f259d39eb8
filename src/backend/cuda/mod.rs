//! The CUDA backend.

pub mod attention;
