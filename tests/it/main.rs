//! Integration tests, built into one binary: the engine suite (run against every engine),
//! configuration, and the HTTP router driven in-process.
//! End-to-end tests with the real binary and socket.io-client live in `e2e/`.

mod config;
mod conformance;
mod db;
mod engine;
mod http;
mod protocol_doc;
mod rollups;
