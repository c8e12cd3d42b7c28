//! End-to-end tests of the HTTP service: a real server on 127.0.0.1:0, real requests.
//! One test binary, so the workspace links it once.

mod auth;
mod common;
mod events;
mod hardening;
mod openapi;
mod stats;
mod stream;
