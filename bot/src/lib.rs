//! Lattice: a Discord bot with episodic memory in Postgres and an OpenRouter LLM.
//!
//! The binary's subcommands live in `main.rs`; this library holds the parts, so the integration
//! tests can run the Discord stand-in in-process from the same code as `lattice-bot discord-standin`.

pub mod alert;
pub mod bot;
pub mod chat;
pub mod config;
pub mod db;
pub mod discord;
pub mod doctor;
pub mod http;
pub mod leader;
pub mod llm;
pub mod reply;
pub mod standin;

/// Installs the process-wide rustls crypto provider (the gateway's TLS needs one).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
