//! Tests of the header helpers (`headers.rs`): framing, hop-by-hop, forwarding, Host, Keep-Alive.

use super::*;

fn map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

#[test]
fn conflicting_framing() {
    assert!(has_conflicting_framing(&map(&[
        ("content-length", "5"),
        ("transfer-encoding", "chunked")
    ])));
    assert!(has_conflicting_framing(&map(&[
        ("content-length", "5"),
        ("content-length", "6")
    ])));
    assert!(has_conflicting_framing(&map(&[("content-length", "5, 6")])));
    assert!(!has_conflicting_framing(&map(&[
        ("content-length", "5"),
        ("content-length", "5")
    ])));
    assert!(!has_conflicting_framing(&map(&[("content-length", "5")])));
    assert!(!has_conflicting_framing(&map(&[(
        "transfer-encoding",
        "chunked"
    )])));
}

#[test]
fn hop_by_hop_and_connection_named_headers_go() {
    let mut h = map(&[
        ("connection", "keep-alive, x-secret"),
        ("keep-alive", "timeout=5"),
        ("x-secret", "1"),
        ("te", "trailers"),
        ("upgrade", "websocket"),
        ("proxy-connection", "keep-alive"),
        ("x-kept", "yes"),
    ]);
    strip_hop_by_hop(&mut h, false);
    assert_eq!(h.len(), 1);
    assert!(h.contains_key("x-kept"));
}

#[test]
fn every_connection_field_and_token_counts() {
    let mut h = map(&[
        ("connection", "Close"),
        ("connection", " X-A ,, x-b "),
        ("x-a", "1"),
        ("x-b", "2"),
        ("x-c", "3"),
    ]);
    strip_hop_by_hop(&mut h, false);
    assert_eq!(h.len(), 1);
    assert!(h.contains_key("x-c"));
}

#[test]
fn upgrade_kept_when_asked() {
    let mut h = map(&[
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("keep-alive", "1"),
    ]);
    assert!(is_upgrade_request(&h));
    strip_hop_by_hop(&mut h, true);
    assert_eq!(h.get("upgrade").unwrap(), "websocket");
    assert_eq!(h.get("connection").unwrap(), "upgrade");
    assert!(!h.contains_key("keep-alive"));
}

#[test]
fn forwarding_headers_append() {
    let mut h = map(&[
        ("x-forwarded-for", "10.0.0.1"),
        ("forwarded", "for=10.0.0.1"),
    ]);
    let host = HeaderValue::from_static("app.example.com");
    add_forwarding(
        &mut h,
        &ClientIdentity::new("192.0.2.7".parse().unwrap()),
        "https",
        Some(&host),
    );
    assert_eq!(h.get("x-forwarded-for").unwrap(), "10.0.0.1, 192.0.2.7");
    assert_eq!(h.get("x-forwarded-proto").unwrap(), "https");
    assert_eq!(h.get("x-forwarded-host").unwrap(), "app.example.com");
    assert_eq!(
        h.get("forwarded").unwrap(),
        "for=10.0.0.1, for=192.0.2.7;proto=https;host=app.example.com"
    );
    let mut v6 = HeaderMap::new();
    add_forwarding(
        &mut v6,
        &ClientIdentity::new("::1".parse().unwrap()),
        "http",
        None,
    );
    assert_eq!(v6.get("forwarded").unwrap(), "for=\"[::1]\";proto=http");
}

#[test]
fn several_forwarding_lines_join_into_one_list() {
    let mut h = HeaderMap::new();
    h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
    h.append("x-forwarded-for", HeaderValue::from_static(" "));
    h.append(
        "x-forwarded-for",
        HeaderValue::from_static("10.0.0.2, 10.0.0.3"),
    );
    add_forwarding(
        &mut h,
        &ClientIdentity::new("192.0.2.7".parse().unwrap()),
        "http",
        None,
    );
    let all: Vec<_> = h.get_all("x-forwarded-for").iter().collect();
    assert_eq!(all, ["10.0.0.1, 10.0.0.2, 10.0.0.3, 192.0.2.7"]);
}

#[test]
fn hosts_and_ports() {
    assert_eq!(strip_port("a.example.com:8443"), "a.example.com");
    assert_eq!(strip_port("a.example.com"), "a.example.com");
    assert_eq!(strip_port("[::1]:80"), "[::1]");
    let h = map(&[("host", "App.Example.COM:8443")]);
    assert_eq!(
        request_host(&"/x".parse().unwrap(), &h).as_deref(),
        Some("app.example.com")
    );
}

#[test]
fn host_header_syntax() {
    for good in [
        "a.example.com",
        "a.example.com:8443",
        "127.0.0.1:80",
        "[::1]:8080",
        "[::1]",
        "x_y",
    ] {
        assert!(valid_host_header(good.as_bytes()), "{good}");
    }
    for bad in [
        "",
        "a b",
        "a/b",
        "user@host",
        "a:b:c",
        "host:",
        "host:99999999",
        "[::1",
        "[zz]",
        "a\tb",
        "ho\u{7f}st",
    ] {
        assert!(!valid_host_header(bad.as_bytes()), "{bad:?}");
    }
}

#[test]
fn keep_alive_timeout_parsed() {
    assert_eq!(keep_alive_timeout(b"timeout=5, max=100"), Some(5));
    assert_eq!(keep_alive_timeout(b"max=100"), None);
}

#[test]
fn field_kind_agrees_with_the_header_map_names() {
    let names = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
        "content-length",
        "date",
        "content-type",
        "x-backend",
        "tea",
        "dates",
        "upgrades",
        "x-connection",
    ];
    for lower in names {
        let name = HeaderName::from_static(lower);
        for spelled in [lower.to_string(), lower.to_ascii_uppercase()] {
            let kind = field_kind(spelled.as_bytes());
            let hop = !matches!(
                kind,
                FieldKind::ContentLength | FieldKind::Date | FieldKind::Other
            );
            assert_eq!(hop, is_hop_by_hop(&name), "{spelled}");
            assert_eq!(
                kind == FieldKind::Date,
                name == hyper::header::DATE,
                "{spelled}"
            );
            let mut by_name = FramingFields::default();
            let mut by_kind = FramingFields::default();
            assert_eq!(
                by_name.note(&name, b"5"),
                by_kind.note_kind(kind, b"5"),
                "{spelled}"
            );
        }
    }
}

/// The fields `add_forwarding` puts into an empty map, in order.
fn inserted(client: &ClientIdentity, proto: &'static str, host: Option<&HeaderValue>) -> String {
    let mut h = HeaderMap::new();
    add_forwarding(&mut h, client, proto, host);
    h.iter()
        .map(|(k, v)| format!("{k}: {}\r\n", v.to_str().unwrap()))
        .collect()
}

#[test]
fn forwarding_lines_say_what_add_forwarding_inserts() {
    let v4 = ClientIdentity::new("192.0.2.7".parse().unwrap());
    let v6 = ClientIdentity::new("2001:db8::1".parse().unwrap());
    let plain = HeaderValue::from_static("app.example.com:8443");
    let odd = HeaderValue::from_static("a b");
    for (client, proto, host) in [
        (&v4, "https", Some(&plain)),
        (&v4, "http", None),
        (&v6, "http", Some(&plain)),
        (&v6, "https", Some(&odd)),
    ] {
        let lines = forwarding_lines(&HeaderMap::new(), client, proto, host).unwrap();
        assert_eq!(
            std::str::from_utf8(&lines).unwrap(),
            inserted(client, proto, host),
            "{proto} {host:?}"
        );
    }
    let lines = forwarding_lines(&HeaderMap::new(), &v4, "https", Some(&plain)).unwrap();
    assert_eq!(
        std::str::from_utf8(&lines).unwrap(),
        "x-forwarded-for: 192.0.2.7\r\nx-forwarded-proto: https\r\n\
         x-forwarded-host: app.example.com:8443\r\n\
         forwarded: for=192.0.2.7;proto=https;host=app.example.com:8443\r\n"
    );
}

#[test]
fn forwarding_lines_are_built_once_per_host_and_proto() {
    let client = ClientIdentity::new("192.0.2.7".parse().unwrap());
    let a = HeaderValue::from_static("a.example.com");
    let b = HeaderValue::from_static("b.example.com");
    let first = forwarding_lines(&HeaderMap::new(), &client, "http", Some(&a)).unwrap();
    let again = forwarding_lines(&HeaderMap::new(), &client, "http", Some(&a)).unwrap();
    // The same buffer: nothing was built the second time.
    assert_eq!(first.as_ptr(), again.as_ptr());
    let other = forwarding_lines(&HeaderMap::new(), &client, "http", Some(&b)).unwrap();
    assert_ne!(first.as_ptr(), other.as_ptr());
    assert!(std::str::from_utf8(&other)
        .unwrap()
        .contains("host=b.example.com"));
    // After the map path built the Forwarded value, the lines follow it.
    let mut h = HeaderMap::new();
    add_forwarding(&mut h, &client, "https", Some(&a));
    let lines = forwarding_lines(&HeaderMap::new(), &client, "https", Some(&a)).unwrap();
    assert_eq!(
        std::str::from_utf8(&lines).unwrap(),
        inserted(&client, "https", Some(&a))
    );
}

#[test]
fn a_request_with_forwarding_fields_takes_the_map_path() {
    let client = ClientIdentity::new("192.0.2.7".parse().unwrap());
    for name in [
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "forwarded",
    ] {
        let sent = map(&[("accept", "*/*"), (name, "x")]);
        assert!(
            forwarding_lines(&sent, &client, "http", None).is_none(),
            "{name}"
        );
    }
}
