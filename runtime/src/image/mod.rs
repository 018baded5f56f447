//! A content-addressed image store: blobs by digest, each layer unpacked once (keyed by its
//! diff ID) in overlayfs form, and an index of image names. Images come from OCI image layouts,
//! OCI archives and docker-archive tarballs; every blob's digest is verified on the way in.
//!
//! `store` keeps the records and answers lookups; `archive` reads and writes archives; `commit`
//! verifies and adds what an archive or a pull brings; `gc` sweeps what no image refers to.

mod archive;
mod commit;
mod format;
mod gc;
pub mod layer;
pub mod pull;
pub mod reference;
mod store;
mod table;

use std::io;
use std::path::{Path, PathBuf};

pub use store::{
    make_writable_and_remove, tempdir_in, ImageConfig, ImageRecord, ImageStore, TempDir,
};
pub use table::{human_size, write_table};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    // The cause is part of the message and not also a source(), so chains print it once.
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error("{file}: {message}")]
    Format { file: String, message: String },
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    Digest {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("layer {index} ({digest}): {error}")]
    Layer {
        index: usize,
        digest: String,
        error: layer::LayerError,
    },
    #[error("image {0:?} not found")]
    NotFound(String),
    #[error("image {name:?} is in use by a running container ({layer})")]
    InUse { name: String, layer: String },
    #[error("{0}")]
    Reference(String),
    #[error("{reference}: {message}")]
    Registry {
        reference: String,
        message: String,
        /// The registry refused the credentials (or their absence).
        auth: bool,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> ImageError + '_ {
    move |error| ImageError::Io {
        path: path.to_path_buf(),
        error,
    }
}

fn format_err(file: impl Into<String>, message: impl Into<String>) -> ImageError {
    ImageError::Format {
        file: file.into(),
        message: message.into(),
    }
}
