//! Black-box tests: each test starts the real `estuary` binary on a loopback
//! port with a temporary database and speaks HTTP to it.

mod accounts;
mod admin;
mod appservice;
mod calls;
mod concurrency;
mod delayed;
mod devices;
mod discovery;
mod errors;
mod event_stream;
mod federation;
mod harness;
mod interop;
mod keys;
mod login;
mod media;
mod peek;
mod process;
mod push;
mod pushers;
mod rate_limits;
mod register;
mod relations;
mod room_features;
mod rooms;
mod search;
mod sliding_sync;
mod sync;
mod user_data;
