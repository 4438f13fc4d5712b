//! `Accept-Encoding` negotiation (RFC 9110 §12.5.3): parses the request's lists of
//! codings with q-values and picks the coding a `compress` route answers with.
//!
//! Rules: the highest q among the route's codings wins, ties go to the route's order;
//! `q=0` refuses a coding; `*` stands for every coding not named explicitly; `x-gzip`
//! counts as `gzip`; an `identity` (or `*`) weight above every offered coding keeps the
//! response as it is; tokens are case-insensitive; an entry that does not parse (bad
//! token, bad or repeated q, other parameters) is ignored, the first entry naming a
//! coding counts. No header at all means no compression.

use hyper::header::ACCEPT_ENCODING;
use hyper::HeaderMap;

use crate::config::Coding;

/// A q-value in thousandths: 0 (refused) to 1000.
type Weight = u16;

/// The weights an `Accept-Encoding` list gives to what tollgate cares about.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AcceptEncoding {
    gzip: Option<Weight>,
    br: Option<Weight>,
    zstd: Option<Weight>,
    identity: Option<Weight>,
    any: Option<Weight>,
}

impl AcceptEncoding {
    /// Reads every `Accept-Encoding` field of `headers`; `None` when there is none.
    /// Field values that are not visible ASCII are skipped.
    pub fn from_headers(headers: &HeaderMap) -> Option<AcceptEncoding> {
        let mut values = headers.get_all(ACCEPT_ENCODING).iter().peekable();
        values.peek()?;
        let mut accept = AcceptEncoding::default();
        for value in values {
            if let Ok(text) = value.to_str() {
                accept.add(text);
            }
        }
        Some(accept)
    }

    /// Parses one field value (a comma-separated list) into `self`.
    pub fn parse(value: &str) -> AcceptEncoding {
        let mut accept = AcceptEncoding::default();
        accept.add(value);
        accept
    }

    fn add(&mut self, value: &str) {
        for entry in value.split(',') {
            let Some((token, weight)) = parse_entry(entry) else {
                continue;
            };
            let slot = if token.eq_ignore_ascii_case("gzip") || token.eq_ignore_ascii_case("x-gzip")
            {
                &mut self.gzip
            } else if token.eq_ignore_ascii_case("br") {
                &mut self.br
            } else if token.eq_ignore_ascii_case("zstd") {
                &mut self.zstd
            } else if token.eq_ignore_ascii_case("identity") {
                &mut self.identity
            } else if token == "*" {
                &mut self.any
            } else {
                continue;
            };
            if slot.is_none() {
                *slot = Some(weight);
            }
        }
    }

    fn weight(&self, coding: Coding) -> Weight {
        let explicit = match coding {
            Coding::Gzip => self.gzip,
            Coding::Brotli => self.br,
            Coding::Zstd => self.zstd,
        };
        explicit.or(self.any).unwrap_or(0)
    }

    /// The coding to answer with among `offered` (the server's preference first), or
    /// `None` to send the response unencoded.
    pub fn choose(&self, offered: &[Coding]) -> Option<Coding> {
        let mut best: Option<(Coding, Weight)> = None;
        for &coding in offered {
            let weight = self.weight(coding);
            if weight > 0 && best.is_none_or(|(_, w)| weight > w) {
                best = Some((coding, weight));
            }
        }
        let (coding, weight) = best?;
        match self.identity.or(self.any) {
            Some(identity) if identity > weight => None,
            _ => Some(coding),
        }
    }
}

/// The coding `headers` ask for among `offered`; `None` without `Accept-Encoding`.
pub fn negotiate(headers: &HeaderMap, offered: &[Coding]) -> Option<Coding> {
    AcceptEncoding::from_headers(headers)?.choose(offered)
}

/// One list entry: `token [ OWS ";" OWS "q=" qvalue ]`; `None` when malformed or empty.
fn parse_entry(entry: &str) -> Option<(&str, Weight)> {
    let mut parts = entry.split(';');
    let token = parts.next()?.trim();
    if token.is_empty() || !token.bytes().all(is_tchar) {
        return None;
    }
    let weight = match parts.next() {
        None => 1000,
        Some(param) => {
            let (name, value) = param.split_once('=')?;
            if !name.trim().eq_ignore_ascii_case("q") {
                return None;
            }
            parse_qvalue(value.trim())?
        }
    };
    if parts.next().is_some() {
        return None;
    }
    Some((token, weight))
}

/// `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )`, in thousandths.
fn parse_qvalue(text: &str) -> Option<Weight> {
    let (whole, fraction) = match text.split_once('.') {
        Some((whole, fraction)) => (whole, fraction),
        None => (text, ""),
    };
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut thousandths: Weight = 0;
    for (i, digit) in fraction.bytes().enumerate() {
        let scale = [100, 10, 1][i];
        thousandths += Weight::from(digit - b'0') * scale;
    }
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    const ALL: &[Coding] = &[Coding::Gzip, Coding::Brotli, Coding::Zstd];
    const GZIP_BR: &[Coding] = &[Coding::Gzip, Coding::Brotli];

    fn pick(value: &str, offered: &[Coding]) -> Option<Coding> {
        AcceptEncoding::parse(value).choose(offered)
    }

    #[test]
    fn plain_lists_follow_the_server_order() {
        assert_eq!(pick("gzip", ALL), Some(Coding::Gzip));
        assert_eq!(pick("br", ALL), Some(Coding::Brotli));
        assert_eq!(pick("zstd", ALL), Some(Coding::Zstd));
        assert_eq!(pick("gzip, deflate, br, zstd", ALL), Some(Coding::Gzip));
        assert_eq!(pick("br, gzip", ALL), Some(Coding::Gzip));
        let br_first = [Coding::Brotli, Coding::Gzip];
        assert_eq!(pick("gzip, br", &br_first), Some(Coding::Brotli));
        assert_eq!(pick("zstd", GZIP_BR), None);
    }

    #[test]
    fn q_values_order_and_exclude() {
        assert_eq!(pick("gzip;q=0.5, br;q=0.8", ALL), Some(Coding::Brotli));
        assert_eq!(pick("gzip;q=1.0, br;q=0.999", ALL), Some(Coding::Gzip));
        assert_eq!(pick("gzip;q=0, br", ALL), Some(Coding::Brotli));
        assert_eq!(pick("gzip;q=0, br;q=0", GZIP_BR), None);
        assert_eq!(pick("br;q=0.5, gzip;q=0.5", ALL), Some(Coding::Gzip));
        assert_eq!(pick("gzip ; Q=0.2 ,br;q=0.1", ALL), Some(Coding::Gzip));
        assert_eq!(pick("gzip;q=0.000", ALL), None);
    }

    #[test]
    fn star_identity_and_unknown_codings() {
        assert_eq!(pick("*", ALL), Some(Coding::Gzip));
        assert_eq!(pick("*;q=0", ALL), None);
        assert_eq!(pick("*;q=0, br", ALL), Some(Coding::Brotli));
        assert_eq!(pick("gzip;q=0, *", ALL), Some(Coding::Brotli));
        assert_eq!(pick("br;q=0.3, *;q=0.5", ALL), Some(Coding::Gzip));
        assert_eq!(pick("identity", ALL), None);
        assert_eq!(pick("identity;q=1, gzip;q=0.5", ALL), None);
        assert_eq!(pick("identity;q=0.5, gzip", ALL), Some(Coding::Gzip));
        assert_eq!(pick("identity;q=0, gzip", ALL), Some(Coding::Gzip));
        assert_eq!(pick("compress, deflate", ALL), None);
        assert_eq!(pick("", ALL), None);
        assert_eq!(pick("x-gzip", ALL), Some(Coding::Gzip));
        assert_eq!(pick("GZIP", ALL), Some(Coding::Gzip));
        assert_eq!(pick("Br", ALL), Some(Coding::Brotli));
    }

    #[test]
    fn malformed_entries_are_ignored() {
        assert_eq!(pick("gzip;q=2, br", ALL), Some(Coding::Brotli));
        assert_eq!(pick("gzip;q=abc, br", ALL), Some(Coding::Brotli));
        assert_eq!(pick("gzip;q=0.1234, br;q=0.1", ALL), Some(Coding::Brotli));
        assert_eq!(pick("gzip;q=1.5, br;q=0.1", ALL), Some(Coding::Brotli));
        assert_eq!(pick("gzip;level=9, br;q=0.1", ALL), Some(Coding::Brotli));
        assert_eq!(pick("gzip;q=0.5;q=1, br;q=0.1", ALL), Some(Coding::Brotli));
        assert_eq!(pick("g zip, br", ALL), Some(Coding::Brotli));
        assert_eq!(pick(",,, ;q=1, br", ALL), Some(Coding::Brotli));
        assert_eq!(pick("gzip;q=-0, br", ALL), Some(Coding::Brotli));
        // The first entry naming a coding counts.
        assert_eq!(pick("gzip;q=0, gzip, br", ALL), Some(Coding::Brotli));
    }

    #[test]
    fn qvalues_parse_exactly() {
        assert_eq!(parse_qvalue("0"), Some(0));
        assert_eq!(parse_qvalue("0."), Some(0));
        assert_eq!(parse_qvalue("0.5"), Some(500));
        assert_eq!(parse_qvalue("0.05"), Some(50));
        assert_eq!(parse_qvalue("0.001"), Some(1));
        assert_eq!(parse_qvalue("1"), Some(1000));
        assert_eq!(parse_qvalue("1.000"), Some(1000));
        for bad in ["", ".5", "1.001", "2", "0.5x", "00.5", "+1", "0.-1", "1e0"] {
            assert_eq!(parse_qvalue(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn headers_absent_present_and_repeated() {
        let mut headers = HeaderMap::new();
        assert_eq!(negotiate(&headers, ALL), None);
        headers.append(ACCEPT_ENCODING, HeaderValue::from_static("gzip;q=0"));
        assert_eq!(negotiate(&headers, ALL), None);
        headers.append(ACCEPT_ENCODING, HeaderValue::from_static("br;q=0.4"));
        assert_eq!(negotiate(&headers, ALL), Some(Coding::Brotli));
        let mut opaque = HeaderMap::new();
        opaque.append(
            ACCEPT_ENCODING,
            HeaderValue::from_bytes(b"gzip\xff").unwrap(),
        );
        opaque.append(ACCEPT_ENCODING, HeaderValue::from_static("zstd"));
        assert_eq!(negotiate(&opaque, ALL), Some(Coding::Zstd));
    }

    #[test]
    fn every_prefix_parses_without_panicking() {
        let values = [
            "gzip;q=0.5, br;q=0.8, zstd;q=0.001, identity;q=0, *;q=0",
            "x-gzip ;  Q = 1.000 ,\t deflate;q=0.9,,compress;q=",
            "br;q=0.123;q=1, *, identity;q=1.000, gzip;level=1",
            "é, gzip;q=0.5, ünïcode;q=1",
        ];
        for value in values {
            for end in 0..=value.len() {
                let Some(prefix) = value.get(..end) else {
                    continue;
                };
                let accept = AcceptEncoding::parse(prefix);
                let _ = accept.choose(ALL);
                let _ = accept.choose(&[]);
                let bytes = &value.as_bytes()[..end];
                if let Ok(header) = HeaderValue::from_bytes(bytes) {
                    let mut headers = HeaderMap::new();
                    headers.insert(ACCEPT_ENCODING, header);
                    let _ = negotiate(&headers, ALL);
                }
            }
        }
    }
}
