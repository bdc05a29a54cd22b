//! Estuary's foundation: configuration, the Matrix error type, and small
//! utilities every other crate shares. Knows nothing of storage or HTTP.

pub mod config;
pub mod error;
pub mod time;

pub use config::Config;
pub use error::{Error, Result};
