//! Validation of a route's content features: `static`, `compress` and `cache`
//! (docs/config.md), and of sizes written with a unit (`64MiB`).

use std::path::Path;

use super::file::{CacheFile, CompressFile, SizeFile, StaticFile};
use super::model::*;
use crate::error::ConfigError;

/// Parses `64MiB`, `512KiB`, `1GiB`, `10MB`, `4096` or `4096B` (binary units are powers
/// of 1024, decimal ones of 1000).
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(factor)
}

fn size_at(path: &str, size: &SizeFile) -> Result<u64, ConfigError> {
    match size {
        SizeFile::Bytes(n) => Ok(*n),
        SizeFile::Text(text) => parse_size(text).ok_or_else(|| {
            ConfigError::new(
                path,
                format!("{text:?} is not a size (write 64MiB, 512KiB or a number of bytes)"),
            )
        }),
    }
}

/// Checks `static:`: the root must be an existing directory (kept canonical).
pub(super) fn validate_static(path: &str, s: &StaticFile) -> Result<StaticSpec, ConfigError> {
    let root = Path::new(&s.root)
        .canonicalize()
        .map_err(|e| ConfigError::new(format!("{path}.root"), format!("{:?}: {e}", s.root)))?;
    if !root.is_dir() {
        return Err(ConfigError::new(
            format!("{path}.root"),
            format!("{:?} is not a directory", s.root),
        ));
    }
    let index = s.index.clone().unwrap_or_else(|| "index.html".to_string());
    if index.is_empty() || index.contains('/') || index == ".." || index == "." {
        return Err(ConfigError::new(
            format!("{path}.index"),
            "must be a file name (no /)",
        ));
    }
    Ok(StaticSpec { root, index })
}

/// Checks `compress:`; defaults: gzip then br, 1024 bytes, [`DEFAULT_COMPRESS_TYPES`].
pub(super) fn validate_compress(path: &str, c: &CompressFile) -> Result<CompressSpec, ConfigError> {
    let algorithms = match &c.algorithms {
        None => vec![Coding::Gzip, Coding::Brotli],
        Some(list) => {
            let mut out = Vec::with_capacity(list.len());
            for (i, name) in list.iter().enumerate() {
                let Some(coding) = Coding::parse(name) else {
                    return Err(ConfigError::new(
                        format!("{path}.algorithms[{i}]"),
                        format!("{name:?} is not one of gzip, br, zstd"),
                    ));
                };
                if !out.contains(&coding) {
                    out.push(coding);
                }
            }
            if out.is_empty() {
                return Err(ConfigError::new(
                    format!("{path}.algorithms"),
                    "name at least one of gzip, br, zstd",
                ));
            }
            out
        }
    };
    let types = match &c.types {
        None => DEFAULT_COMPRESS_TYPES
            .iter()
            .map(|t| t.to_string())
            .collect(),
        Some(list) => {
            for (i, t) in list.iter().enumerate() {
                if !t.contains('/') || t.contains(';') || t.trim() != t {
                    return Err(ConfigError::new(
                        format!("{path}.types[{i}]"),
                        format!("{t:?} is not a media type like text/html or text/*"),
                    ));
                }
            }
            list.iter().map(|t| t.to_ascii_lowercase()).collect()
        }
    };
    Ok(CompressSpec {
        algorithms,
        min_bytes: c.min_bytes.unwrap_or(1024),
        types,
    })
}

/// Checks `cache:`.
pub(super) fn validate_cache(path: &str, c: &CacheFile) -> Result<CacheSpec, ConfigError> {
    let max_bytes = size_at(&format!("{path}.max_bytes"), &c.max_bytes)?;
    if max_bytes == 0 {
        return Err(ConfigError::new(
            format!("{path}.max_bytes"),
            "must be more than zero",
        ));
    }
    let max_object_bytes = match &c.max_object_bytes {
        None => (max_bytes / 8).clamp(1, 8 << 20),
        Some(size) => size_at(&format!("{path}.max_object_bytes"), size)?,
    };
    if max_object_bytes == 0 || max_object_bytes > max_bytes {
        return Err(ConfigError::new(
            format!("{path}.max_object_bytes"),
            "must be more than zero and at most max_bytes",
        ));
    }
    Ok(CacheSpec {
        max_bytes,
        max_object_bytes,
        x_cache_header: c.x_cache_header.unwrap_or(true),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Some(64 << 20));
        assert_eq!(parse_size("512KiB"), Some(512 << 10));
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("10MB"), Some(10_000_000));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("4096B"), Some(4096));
        assert_eq!(parse_size("MiB"), None);
        assert_eq!(parse_size("12 parsecs"), None);
        assert_eq!(parse_size("99999999999999GiB"), None);
    }
}
