//! Criterion benchmark of response compression: a ~100 KB JSON API response through
//! tollgate's streaming encoder (`content::compress::encode_body`) with each coding at
//! the levels tollgate uses, and the same document at neighbouring levels for
//! comparison. Prints bytes in/out and the ratio of each before measuring; criterion
//! reports time per response and MB/s of input.
//!
//! Run: `cargo bench --bench compression` (numbers in docs/benchmarking.md).

use std::hint::black_box;

use async_compression::tokio::bufread::{BrotliEncoder, GzipEncoder, ZstdEncoder};
use async_compression::Level;
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http_body_util::BodyExt;
use tokio::io::AsyncReadExt;
use tollgate::config::Coding;
use tollgate::content::compress::{encode_body, BROTLI_QUALITY, GZIP_LEVEL, ZSTD_LEVEL};
use tollgate::http::client::full_body;

/// A JSON API response of about `target` bytes: varied records (ids, names, e-mail,
/// timestamps, prices, flags, tags), as a list endpoint would return.
fn json_document(target: usize) -> Bytes {
    const WORDS: [&str; 12] = [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
        "juliet", "kilo", "lima",
    ];
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut out = String::from("{\"data\":[");
    let mut i = 0u64;
    while out.len() < target {
        let r = next();
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            "{{\"id\":{},\"name\":\"{} {}\",\"email\":\"{}.{}@example.com\",\
             \"created_at\":\"2026-{:02}-{:02}T{:02}:{:02}:{:02}Z\",\"price\":{}.{:02},\
             \"in_stock\":{},\"tags\":[\"{}\",\"{}\"],\"rating\":{:.2}}}",
            100_000 + i * 7 + r % 7,
            WORDS[(r % 12) as usize],
            WORDS[(r >> 8) as usize % 12],
            WORDS[(r >> 16) as usize % 12],
            r % 10_000,
            1 + r % 12,
            1 + (r >> 4) % 28,
            (r >> 9) % 24,
            (r >> 14) % 60,
            (r >> 20) % 60,
            r % 500,
            (r >> 3) % 100,
            r % 3 != 0,
            WORDS[(r >> 24) as usize % 12],
            WORDS[(r >> 28) as usize % 12],
            ((r >> 32) % 500) as f64 / 100.0,
        ));
        i += 1;
    }
    out.push_str("],\"next\":null}");
    Bytes::from(out)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
}

/// One response through tollgate's encoder; the compressed size.
async fn tollgate_encode(coding: Coding, doc: &Bytes) -> usize {
    let body = encode_body(coding, full_body(doc.clone()));
    let out = body.collect().await.expect("encode").to_bytes();
    out.len()
}

/// The same document through a plain async-compression encoder at another level.
async fn other_level(coding: Coding, level: i32, doc: &Bytes) -> usize {
    let mut out = Vec::with_capacity(doc.len());
    let input = &doc[..];
    let result = match coding {
        Coding::Gzip => {
            GzipEncoder::with_quality(input, Level::Precise(level))
                .read_to_end(&mut out)
                .await
        }
        Coding::Brotli => {
            BrotliEncoder::with_quality(input, Level::Precise(level))
                .read_to_end(&mut out)
                .await
        }
        Coding::Zstd => {
            ZstdEncoder::with_quality(input, Level::Precise(level))
                .read_to_end(&mut out)
                .await
        }
    };
    result.expect("encode");
    out.len()
}

fn tollgate_levels(c: &mut Criterion) {
    let doc = json_document(100_000);
    let rt = runtime();
    let mut group = c.benchmark_group("compress_json_100KB");
    group.throughput(Throughput::Bytes(doc.len() as u64));
    for (coding, level) in [
        (Coding::Gzip, GZIP_LEVEL),
        (Coding::Brotli, BROTLI_QUALITY),
        (Coding::Zstd, ZSTD_LEVEL),
    ] {
        let out = rt.block_on(tollgate_encode(coding, &doc));
        println!(
            "tollgate {} level {level}: {} -> {} bytes, ratio {:.2}, saved {:.1}%",
            coding.as_str(),
            doc.len(),
            out,
            doc.len() as f64 / out as f64,
            100.0 * (1.0 - out as f64 / doc.len() as f64)
        );
        let name = format!("{}_{level}", coding.as_str());
        group.bench_function(name, |b| {
            b.iter(|| rt.block_on(tollgate_encode(coding, black_box(&doc))))
        });
    }
    group.finish();
}

fn neighbouring_levels(c: &mut Criterion) {
    let doc = json_document(100_000);
    let rt = runtime();
    let mut group = c.benchmark_group("compress_json_100KB_other_levels");
    group.throughput(Throughput::Bytes(doc.len() as u64));
    group.sample_size(20);
    for (coding, level) in [
        (Coding::Gzip, 1),
        (Coding::Gzip, 6),
        (Coding::Gzip, 9),
        (Coding::Brotli, 4),
        (Coding::Brotli, 6),
        (Coding::Brotli, 11),
        (Coding::Zstd, 1),
        (Coding::Zstd, 6),
    ] {
        let out = rt.block_on(other_level(coding, level, &doc));
        println!(
            "other {} level {level}: {} -> {} bytes, ratio {:.2}",
            coding.as_str(),
            doc.len(),
            out,
            doc.len() as f64 / out as f64
        );
        let name = format!("{}_{level}", coding.as_str());
        group.bench_function(name, |b| {
            b.iter(|| rt.block_on(other_level(coding, level, black_box(&doc))))
        });
    }
    group.finish();
}

criterion_group!(benches, tollgate_levels, neighbouring_levels);
criterion_main!(benches);
