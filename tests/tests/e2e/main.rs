//! End-to-end tests: the real `tracker` and `peer` binaries on 127.0.0.1.
//!
//! Build the binaries first: the README's test command does (`cargo build --bins`).

mod auth;
mod chat;
mod cluster;
mod hardening;
mod lab;
mod nat;
mod newuser;
mod private;
mod registry;
mod robustness;
mod security;
mod store;
mod swarm;
mod terminal;
