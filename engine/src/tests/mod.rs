//! Engine tests over a tiny random Llama written with the GGUF test writer: shapes, KV
//! cache consistency, batching, kernel equivalence, determinism and the scheduler.

mod check_tests;
#[cfg(feature = "burn")]
mod device_tests;
mod fixture;
mod model_tests;
mod scheduler_tests;
