//! The config loader (`tollgate::config::from_yaml`) on arbitrary UTF-8.
//!
//! Asserts: it answers `Ok` or `Err` for any text (no panic, no stack overflow, no
//! runaway alias expansion), and every refusal names where it failed — a key path or
//! `(top)` before `": "` (the promise `tests/properties.rs` also checks). Validation may
//! touch the filesystem (static roots, certificate files, relative to the working
//! directory) and resolve `host:port` names; both only ever give errors here.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match tollgate::config::from_yaml(text) {
        Ok(config) => {
            // A validated config formats without panicking.
            let _ = format!("{config:?}");
        }
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.contains(": "),
                "refusal without a place: {message:?}"
            );
        }
    }
});
