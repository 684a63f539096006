//! Errors of scenario loading. Every variant names the file, and the line and field where
//! there is one, so a user can go straight to the mistake.

use std::path::PathBuf;

use thiserror::Error;

/// Why a scenario could not be loaded.
#[derive(Debug, Error)]
pub enum ScenarioError {
    #[error("reading {path}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {path}: {message}")]
    ParseYaml { path: PathBuf, message: String },
    #[error("{path}: line {line}: field `{field}`: {reason}")]
    InvalidField {
        path: PathBuf,
        line: u64,
        field: String,
        reason: String,
    },
    #[error("{path}: line {line}: {reason}")]
    InvalidRow {
        path: PathBuf,
        line: u64,
        reason: String,
    },
    #[error("{path}: missing column `{column}` (the header has: {found})")]
    MissingColumn {
        path: PathBuf,
        column: String,
        found: String,
    },
    #[error("{path}: {reason}")]
    InvalidFile { path: PathBuf, reason: String },
}
