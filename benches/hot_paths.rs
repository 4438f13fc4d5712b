//! Criterion micro-benchmarks of the per-connection and per-request hot functions: the
//! ClientHello parse (a browser's 2 KB post-quantum hello and curl's), the SNI lookup
//! (exact, wildcard, miss) in a 1,000-name table, the L7 route lookup by Host and path,
//! and each balancer's candidate ordering over 8 backends.
//!
//! Run: `cargo bench --bench hot_paths` (numbers in docs/benchmarking.md).

use std::collections::HashMap;
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use tollgate::config::from_yaml;
use tollgate::http::L7State;
use tollgate::metrics::Metrics;
use tollgate::route::{HostPattern, HostTable};
use tollgate::tls::client_hello::parse_client_hello;
use tollgate::upstream::Pool;

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn client_hello(c: &mut Criterion) {
    let chromium = fixture("chromium-clienthello.bin");
    let curl = fixture("curl-clienthello.bin");
    let mut group = c.benchmark_group("client_hello");
    group.bench_function("chromium_2016B_pq", |b| {
        b.iter(|| parse_client_hello(black_box(&chromium)))
    });
    group.bench_function("curl_517B", |b| {
        b.iter(|| parse_client_hello(black_box(&curl)))
    });
    group.bench_function("chromium_incomplete_half", |b| {
        b.iter(|| parse_client_hello(black_box(&chromium[..1000])))
    });
    group.finish();
}

fn sni_lookup(c: &mut Criterion) {
    let mut table = HostTable::new();
    for i in 0..1000 {
        table.insert(
            HostPattern::parse(&format!("host{i}.example.com")).unwrap(),
            i,
        );
        if i % 10 == 0 {
            table.insert(
                HostPattern::parse(&format!("*.zone{i}.example.net")).unwrap(),
                i,
            );
        }
    }
    table.set_default(usize::MAX);
    let mut group = c.benchmark_group("sni_lookup_1000_names");
    group.bench_function("exact", |b| {
        b.iter(|| table.lookup(black_box(Some("host512.example.com"))))
    });
    group.bench_function("exact_mixed_case_trailing_dot", |b| {
        b.iter(|| table.lookup(black_box(Some("Host512.Example.COM."))))
    });
    group.bench_function("wildcard", |b| {
        b.iter(|| table.lookup(black_box(Some("a.zone500.example.net"))))
    });
    group.bench_function("miss_to_default", |b| {
        b.iter(|| table.lookup(black_box(Some("nothing.example.org"))))
    });
    group.finish();
}

fn route_lookup(c: &mut Criterion) {
    let yaml = r#"
listeners: [ { name: web, listen: "127.0.0.1:0", protocol: http, routes: web } ]
routes:
  web:
    - { host: api.example.com, path_prefix: /v1, pool: p }
    - { host: "*.static.example.com", pool: p }
    - { host: admin.example.com, pool: p }
    - { path_prefix: /images, pool: p }
    - { path_prefix: /, pool: p }
pools:
  p: { servers: [ { addr: "127.0.0.1:9" } ] }
"#;
    let config = from_yaml(yaml).unwrap();
    let metrics = Metrics::new();
    let pools: HashMap<String, Arc<Pool>> = config
        .pools
        .values()
        .map(|s| (s.name.clone(), Arc::new(Pool::new(s, None))))
        .collect();
    let l7 = L7State::new(&config, &pools, &metrics);
    let table = l7.table("web").unwrap();
    let mut group = c.benchmark_group("route_lookup");
    group.bench_function("first_rule", |b| {
        b.iter(|| {
            table
                .find(black_box(Some("api.example.com")), black_box("/v1/users"))
                .is_some()
        })
    });
    group.bench_function("wildcard_host", |b| {
        b.iter(|| {
            table
                .find(
                    black_box(Some("cdn.static.example.com")),
                    black_box("/a.css"),
                )
                .is_some()
        })
    });
    group.bench_function("last_rule", |b| {
        b.iter(|| {
            table
                .find(black_box(Some("www.example.com")), black_box("/index.html"))
                .is_some()
        })
    });
    group.finish();
}

fn balancer_pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("balancer_candidates_8_backends");
    for balance in [
        "round_robin",
        "weighted",
        "least_conn",
        "p2c",
        "source_hash",
    ] {
        let servers: Vec<String> = (0..8)
            .map(|i| {
                format!(
                    "{{ addr: \"127.0.0.1:{}\", weight: {} }}",
                    9000 + i,
                    1 + i % 3
                )
            })
            .collect();
        let yaml = format!(
            "listeners: [ {{ name: t, listen: \"127.0.0.1:0\", protocol: tcp, pool: p }} ]\npools:\n  p: {{ balance: {balance}, servers: [ {} ] }}\n",
            servers.join(", ")
        );
        let config = from_yaml(&yaml).unwrap();
        let pool = Pool::new(&config.pools["p"], None);
        let client: SocketAddr = "198.51.100.7:40000".parse().unwrap();
        group.bench_function(balance, |b| {
            b.iter(|| pool.candidates(black_box(Some(client))))
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    client_hello,
    sni_lookup,
    route_lookup,
    balancer_pick
);
criterion_main!(benches);
