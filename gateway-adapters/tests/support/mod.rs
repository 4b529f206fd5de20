//! Test helpers shared by the engine adapter tests. The engine simulators
//! themselves live in the `gateway-sims` crate (`gateway_sims::vllm`,
//! `gateway_sims::sglang`, `gateway_sims::triton`).

pub mod kit;
