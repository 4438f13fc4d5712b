//! Criterion micro-benchmarks of the per-connection and per-request hot functions: the
//! ClientHello parse (a browser's 2 KB post-quantum hello and curl's), the SNI lookup
//! (exact, wildcard, miss) and the L7 route lookup by Host and path, each in tables of
//! 10, 1,000 and 100,000 names, and each balancer's candidate ordering over 8 backends.
//!
//! Run: `cargo bench --bench hot_paths` (numbers in docs/benchmarking.md).

use std::collections::HashMap;
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
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

/// Table sizes of the SNI and Host lookups (issue 6: 10 / 1,000 / 100,000 names).
const NAMES: [usize; 3] = [10, 1_000, 100_000];

fn sni_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("sni_lookup");
    for names in NAMES {
        // `names` exact names, and one wildcard zone per ten of them.
        let mut table = HostTable::new();
        for i in 0..names {
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
        let exact = format!("host{}.example.com", names / 2);
        let mixed_case = format!("Host{}.Example.COM.", names / 2);
        let wildcard = format!("a.zone{}.example.net", names / 20 * 10);
        group.bench_with_input(BenchmarkId::new("exact", names), &exact, |b, name| {
            b.iter(|| table.lookup(black_box(Some(name.as_str()))))
        });
        group.bench_with_input(
            BenchmarkId::new("exact_mixed_case_trailing_dot", names),
            &mixed_case,
            |b, name| b.iter(|| table.lookup(black_box(Some(name.as_str())))),
        );
        group.bench_with_input(BenchmarkId::new("wildcard", names), &wildcard, |b, name| {
            b.iter(|| table.lookup(black_box(Some(name.as_str()))))
        });
        group.bench_function(BenchmarkId::new("miss_to_default", names), |b| {
            b.iter(|| table.lookup(black_box(Some("nothing.example.org"))))
        });
    }
    group.finish();
}

/// A route table `web` of `names` host rules (one wildcard zone per ten) with an
/// `/api` rule for the first host, then a catch-all.
fn route_config(names: usize) -> String {
    let mut rules = String::from("    - { host: host0.example.com, path_prefix: /api, pool: p }\n");
    for i in 0..names {
        rules.push_str(&format!("    - {{ host: host{i}.example.com, pool: p }}\n"));
        if i % 10 == 0 {
            rules.push_str(&format!(
                "    - {{ host: \"*.zone{i}.example.net\", pool: p }}\n"
            ));
        }
    }
    rules.push_str("    - { path_prefix: /, pool: p }\n");
    format!(
        "listeners: [ {{ name: web, listen: \"127.0.0.1:0\", protocol: http, routes: web }} ]\nroutes:\n  web:\n{rules}pools:\n  p: {{ servers: [ {{ addr: \"127.0.0.1:9\" }} ] }}\n"
    )
}

fn route_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_lookup");
    for names in NAMES {
        let config = from_yaml(&route_config(names)).unwrap();
        let metrics = Metrics::new();
        let pools: HashMap<String, Arc<Pool>> = config
            .pools
            .values()
            .map(|s| (s.name.clone(), Arc::new(Pool::new(s, None))))
            .collect();
        let l7 = L7State::new(&config, &pools, &metrics);
        let table = l7.table("web").unwrap();
        let host = format!("host{}.example.com", names / 2);
        let wildcard = format!("cdn.zone{}.example.net", names / 20 * 10);
        let cases = [
            (
                "first_rule_host_and_path",
                "host0.example.com",
                "/api/users",
            ),
            ("host", host.as_str(), "/index.html"),
            ("wildcard_host", wildcard.as_str(), "/a.css"),
            ("miss_to_catch_all", "www.example.org", "/index.html"),
        ];
        for (case, host, path) in cases {
            group.bench_function(BenchmarkId::new(case, names), |b| {
                b.iter(|| table.find(black_box(Some(host)), black_box(path)).is_some())
            });
        }
    }
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
