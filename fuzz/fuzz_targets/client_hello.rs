//! The sans-io ClientHello parser (`tollgate::tls::client_hello`) on arbitrary bytes.
//!
//! Asserts only what the parser promises:
//! - it answers (no panic) for any input;
//! - `Incomplete { needed }` asks for more than it was given and never past the 64 KiB
//!   bound (`incomplete()` turns anything larger into `TooLarge`);
//! - an SNI it returns is a non-empty printable-ASCII host name of at most 255 bytes;
//! - a final answer does not depend on how the bytes arrived: if a prefix already gives
//!   an answer other than `Incomplete`, the whole input gives the same answer (so the
//!   peek, which stops at the first answer, decides the same however reads are split).
//!   One exception is allowed: `TooLarge` from a prefix that ends exactly on a record
//!   boundary whose next header could not fit in 64 KiB may become `Malformed` once that
//!   header's bytes arrive and are not a handshake header (both are refusals).
//! - in particular a proper prefix of a complete hello (`Sni`/`NoSni`) is `Incomplete`
//!   or that same hello (never a refusal, never a different SNI/ALPN).
//!
//! The split points come from the data (a hash of it) and the last proper prefix, so
//! the raw-ClientHello seeds stay valid inputs.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::tls::client_hello::{parse_client_hello, HelloParse, MAX_CLIENT_HELLO_BYTES};

fn check_answer(input: &[u8], answer: &HelloParse) {
    match answer {
        HelloParse::Incomplete { needed } => {
            assert!(*needed > input.len(), "needed {needed} of {}", input.len());
            assert!(*needed <= MAX_CLIENT_HELLO_BYTES, "needed {needed}");
        }
        HelloParse::Sni { name, .. } => {
            assert!(!name.is_empty() && name.len() <= 255, "SNI {name:?}");
            assert!(name.bytes().all(|b| b.is_ascii_graphic()), "SNI {name:?}");
        }
        _ => {}
    }
}

fn check_prefix(input: &[u8], full: &HelloParse, cut: usize) {
    let prefix = &input[..cut];
    let early = parse_client_hello(prefix);
    check_answer(prefix, &early);
    match (&early, full) {
        (HelloParse::Incomplete { .. }, _) => {}
        (HelloParse::TooLarge, HelloParse::TooLarge | HelloParse::Malformed) => {}
        (early, full) => assert_eq!(
            early,
            full,
            "prefix {cut}/{} answered differently from the whole",
            input.len()
        ),
    }
    if matches!(full, HelloParse::Sni { .. } | HelloParse::NoSni { .. }) {
        assert!(
            matches!(early, HelloParse::Incomplete { .. }) || &early == full,
            "prefix {cut}/{} of a hello: {early:?}",
            input.len()
        );
    }
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fuzz_target!(|data: &[u8]| {
    let full = parse_client_hello(data);
    check_answer(data, &full);
    if data.is_empty() {
        return;
    }
    let h = fnv(data);
    check_prefix(data, &full, (h % (data.len() as u64 + 1)) as usize);
    check_prefix(data, &full, ((h >> 32) % data.len() as u64) as usize);
    check_prefix(data, &full, data.len() - 1);
});
