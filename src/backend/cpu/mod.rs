//! The float32 reference forward on the CPU.
