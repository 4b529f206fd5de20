//! Test helpers shared by the engine adapter tests.

pub mod vllm_sim;
