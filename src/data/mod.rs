//! Data files and data sets.
//!
//! `idx` reads the IDX files of the MNIST database (gzip, checksums, header and size
//! checks) into raw bytes. Like `nn`, this module uses only tapeflow's public API.

pub mod idx;
