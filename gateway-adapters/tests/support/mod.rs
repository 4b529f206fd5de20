//! Test helpers shared by the engine adapter tests.

pub mod kit;
pub mod sglang_sim;
pub mod triton_sim;
pub mod vllm_sim;
