//! Shared by the reconciler scenario tests: the mock API server and the fixtures.
#![allow(dead_code)]

pub mod api;
pub mod fixtures;
pub mod scheduler;
pub mod steps;
