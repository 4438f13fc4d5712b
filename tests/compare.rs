//! End to end: the real `tollgate compare` binary starts its own backends and balancer
//! (separate processes), runs all five modes, each with keep-alive and a new connection
//! per request, for a fraction of a second, and writes report.md, report.json and
//! chart.svg. The report must have every scenario, served with zero errors and the same
//! body size, and must say that so little data cannot be trusted. Figures themselves are
//! not checked: numbers come from benchmarks, never from timed tests.

use std::process::Command;
use std::time::Instant;

const SCENARIOS: [&str; 10] = [
    "direct-plain-keepalive",
    "direct-tls-keepalive",
    "passthrough-keepalive",
    "terminate-per-request-keepalive",
    "terminate-pooled-keepalive",
    "direct-plain-newconn",
    "direct-tls-newconn",
    "passthrough-newconn",
    "terminate-per-request-newconn",
    "terminate-pooled-newconn",
];

/// Shorter than the backends' text line, so they cut it: every scenario, whatever its
/// Host and X-Forwarded-For, must get the same size.
const BODY_BYTES: u64 = 40;

#[test]
fn compare_writes_a_report_that_flags_short_runs() {
    let out = tempfile::tempdir().expect("temp dir");
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args([
            "compare",
            "--duration",
            "400ms",
            "--warmup",
            "100ms",
            "--connections",
            "4",
            "--body-bytes",
            &BODY_BYTES.to_string(),
            "--out",
        ])
        .arg(out.path())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run tollgate compare");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    eprintln!("compare took {:?}", started.elapsed());

    let md = std::fs::read_to_string(out.path().join("report.md")).expect("report.md");
    for name in SCENARIOS {
        let rows = md
            .lines()
            .filter(|l| l.starts_with(&format!("| {name} |")))
            .count();
        assert_eq!(rows, 1, "report.md should have one row for {name}:\n{md}");
    }
    assert!(
        md.contains("< 2 s of data"),
        "the short-run trust note is missing:\n{md}"
    );
    assert!(
        md.contains("cannot be taken at face value"),
        "no trust summary:\n{md}"
    );
    assert!(
        md.contains("## Machine") && md.contains("## How to read this"),
        "{md}"
    );

    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("report.json")).expect("report.json"),
    )
    .expect("report.json parses");
    let scenarios = json["scenarios"].as_array().expect("scenarios array");
    let names: Vec<&str> = scenarios
        .iter()
        .filter_map(|s| s["scenario"].as_str())
        .collect();
    let mut expected = SCENARIOS.to_vec();
    expected.sort_unstable();
    let mut got = names.clone();
    got.sort_unstable();
    assert_eq!(got, expected);
    for s in scenarios {
        let name = s["scenario"].as_str().unwrap_or("?");
        assert!(
            s["requests_per_sec"].as_f64().unwrap_or(0.0) > 0.0,
            "{name}: no requests: {s}"
        );
        assert_eq!(s["errors"].as_u64(), Some(0), "{name}: errors: {s}");
        let requests = s["requests"].as_u64().unwrap_or(0);
        let bytes_per_request = s["bytes_per_sec"].as_f64().unwrap_or(0.0)
            / s["requests_per_sec"].as_f64().unwrap_or(1.0);
        assert!(
            requests > 0 && (bytes_per_request - BODY_BYTES as f64).abs() < 1e-6,
            "{name}: {bytes_per_request} body bytes per request, want {BODY_BYTES}: {s}"
        );
        for key in ["p50", "p90", "p99", "p999", "max"] {
            assert!(
                s["latency_ms"][key].as_f64().unwrap_or(0.0) > 0.0,
                "{name}: latency_ms.{key}: {s}"
            );
        }
        assert_eq!(
            s["trusted"],
            serde_json::json!(false),
            "{name}: 0.4 s of data must not be trusted"
        );
        let notes: Vec<&str> = s["trust_notes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|n| n.as_str())
            .collect();
        assert!(
            notes.iter().any(|n| n.starts_with("< 2 s of data")),
            "{name}: {notes:?}"
        );
        let through_balancer = !name.starts_with("direct-");
        assert_eq!(
            s["balancer_cpu_s_per_1k_requests"].is_number(),
            through_balancer,
            "{name}: balancer CPU is measured exactly when the balancer is in the path: {s}"
        );
        assert_eq!(
            s["balancer_peak_rss_mb"].is_number(),
            through_balancer,
            "{name}: {s}"
        );
        assert!(
            s["backends_cpu_s_per_1k_requests"].is_number(),
            "{name}: {s}"
        );
        assert!(s["load_generator_cpu_share"].is_number(), "{name}: {s}");
    }

    let svg = std::fs::read_to_string(out.path().join("chart.svg")).expect("chart.svg");
    assert!(svg.contains("<svg"));
    for name in SCENARIOS {
        assert!(svg.contains(name), "chart.svg lacks {name}");
    }
}

#[test]
fn compare_rejects_unknown_scenarios_and_cpu_lists() {
    for args in [["--scenarios", "terminate"], ["--balancer-cpus", "1-0"]] {
        let output = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .arg("compare")
            .args(args)
            .output()
            .expect("run tollgate compare");
        assert!(!output.status.success(), "{args:?} should fail");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(args[1]),
            "{args:?}: the error should name the bad value: {stderr}"
        );
    }
}
