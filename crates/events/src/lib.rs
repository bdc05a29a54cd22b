//! PDUs without I/O: parsing, building and signing events for every room
//! version, event and room IDs from reference hashes, redaction, the
//! authorization rules and state resolution (all through ruma).
//!
//! Nothing here touches storage or HTTP, so every rule is unit-testable on
//! constructed events.

pub mod auth;
pub mod builder;
pub mod federation;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
pub mod keys;
pub mod pdu;
pub mod resolve;
pub mod resolve_v1;

pub use builder::{BuiltPdu, PduTemplate, build_pdu};
pub use keys::ServerSigningKey;
pub use pdu::Pdu;

/// The largest PDU the spec allows, in bytes of canonical JSON.
pub const MAX_PDU_BYTES: usize = 65_536;

#[cfg(test)]
mod tests;
