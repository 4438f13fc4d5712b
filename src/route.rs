//! Hostname tables shared by every mode: the SNI table of a `tls` listener and the Host
//! part of L7 routes. Lookup order: exact name, then the longest wildcard suffix
//! (`*.example.com` matches any name ending in `.example.com`, at any depth, but not
//! `example.com` itself), then the table's default. Names are compared ASCII
//! case-insensitively and without a trailing dot. Exact names and wildcard suffixes are
//! both hashed: a lookup costs one probe per label of the name, whatever the table's
//! size (`benches/hot_paths.rs` measures 10, 1,000 and 100,000 names).

use std::collections::HashMap;

/// Lower-cases `name` and drops one trailing dot: the form every table stores and looks up.
pub fn normalize_host(name: &str) -> String {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    trimmed.to_ascii_lowercase()
}

/// [`normalize_host`] without a copy when `name` is already normal (the usual case).
pub fn normalized_host(name: &str) -> std::borrow::Cow<'_, str> {
    if name.ends_with('.') || name.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(normalize_host(name))
    } else {
        std::borrow::Cow::Borrowed(name)
    }
}

/// A hostname pattern: exact or `*.suffix`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// Matches only this name (normalized).
    Exact(String),
    /// Matches any name ending in `.suffix`; holds `.suffix` (normalized, with its dot).
    Wildcard(String),
}

impl HostPattern {
    /// Parses `name` or `*.suffix`. Returns `None` for a malformed pattern
    /// (empty, a `*` anywhere but a leading `*.` label, spaces).
    pub fn parse(pattern: &str) -> Option<HostPattern> {
        let norm = normalize_host(pattern);
        if norm.is_empty() || norm.contains(char::is_whitespace) {
            return None;
        }
        if let Some(suffix) = norm.strip_prefix("*.") {
            if suffix.is_empty() || suffix.contains('*') {
                return None;
            }
            return Some(HostPattern::Wildcard(format!(".{suffix}")));
        }
        if norm.contains('*') {
            return None;
        }
        Some(HostPattern::Exact(norm))
    }

    /// Whether `host` (already normalized) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => name == host,
            HostPattern::Wildcard(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        }
    }
}

/// Name → value table with exact entries, wildcard suffixes and a default.
#[derive(Debug, Clone)]
pub struct HostTable<T> {
    exact: HashMap<String, T>,
    /// `".suffix"` → value.
    wildcards: HashMap<String, T>,
    /// The longest key of `wildcards`.
    longest_wildcard: usize,
    default: Option<T>,
}

/// The wildcard suffixes of at most `longest` bytes that `host` (normalized) could match,
/// longest first: `.b.c` and `.c` for `a.b.c`. A suffix is never the whole name (`*.c`
/// does not match `.c`). Bounding the length by the table's longest wildcard keeps a
/// client's Host of thousands of dots from costing one hash of the rest of the name per
/// dot.
pub fn wildcard_suffixes(host: &str, longest: usize) -> impl Iterator<Item = &str> {
    let start = host.len().saturating_sub(longest).max(1);
    let bytes = host.as_bytes();
    (start..host.len())
        .filter(move |i| bytes[*i] == b'.')
        .map(move |i| &host[i..])
}

impl<T> Default for HostTable<T> {
    fn default() -> Self {
        HostTable {
            exact: HashMap::new(),
            wildcards: HashMap::new(),
            longest_wildcard: 0,
            default: None,
        }
    }
}

impl<T> HostTable<T> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an entry; a later entry for the same pattern replaces the earlier one.
    pub fn insert(&mut self, pattern: HostPattern, value: T) {
        match pattern {
            HostPattern::Exact(name) => {
                self.exact.insert(name, value);
            }
            HostPattern::Wildcard(suffix) => {
                self.longest_wildcard = self.longest_wildcard.max(suffix.len());
                self.wildcards.insert(suffix, value);
            }
        }
    }

    /// Sets the value for names no entry matches (and for no name at all).
    pub fn set_default(&mut self, value: T) {
        self.default = Some(value);
    }

    /// The default value, if any.
    pub fn default_value(&self) -> Option<&T> {
        self.default.as_ref()
    }

    /// Looks `name` up: exact, longest wildcard, default. `None` name goes to the default.
    pub fn lookup(&self, name: Option<&str>) -> Option<&T> {
        let Some(name) = name else {
            return self.default.as_ref();
        };
        self.lookup_named(name).or(self.default.as_ref())
    }

    /// Looks `name` up without falling back to the default.
    pub fn lookup_named(&self, name: &str) -> Option<&T> {
        let host = normalized_host(name);
        let host = host.as_ref();
        if let Some(v) = self.exact.get(host) {
            return Some(v);
        }
        if self.wildcards.is_empty() {
            return None;
        }
        let found = wildcard_suffixes(host, self.longest_wildcard)
            .find_map(|suffix| self.wildcards.get(suffix));
        found
    }

    /// Every value, default last.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.exact
            .values()
            .chain(self.wildcards.values())
            .chain(self.default.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> HostTable<&'static str> {
        let mut t = HostTable::new();
        t.insert(HostPattern::parse("secure.example.com").unwrap(), "exact");
        t.insert(HostPattern::parse("*.example.com").unwrap(), "wild");
        t.insert(HostPattern::parse("*.eu.example.com").unwrap(), "wild-eu");
        t.set_default("default");
        t
    }

    #[test]
    fn exact_beats_wildcard() {
        assert_eq!(table().lookup(Some("secure.example.com")), Some(&"exact"));
    }

    #[test]
    fn longest_wildcard_wins() {
        let t = table();
        assert_eq!(t.lookup(Some("a.eu.example.com")), Some(&"wild-eu"));
        assert_eq!(t.lookup(Some("a.b.eu.example.com")), Some(&"wild-eu"));
        assert_eq!(t.lookup(Some("a.example.com")), Some(&"wild"));
        assert_eq!(t.lookup(Some("eu.example.com")), Some(&"wild"));
    }

    #[test]
    fn wildcard_does_not_match_bare_suffix() {
        assert_eq!(table().lookup(Some("example.com")), Some(&"default"));
        assert_eq!(table().lookup_named("example.com"), None);
    }

    #[test]
    fn case_and_trailing_dot_ignored() {
        let t = table();
        assert_eq!(t.lookup(Some("SECURE.Example.COM.")), Some(&"exact"));
        assert_eq!(t.lookup(Some("X.EXAMPLE.com.")), Some(&"wild"));
    }

    #[test]
    fn no_name_and_unknown_go_to_default() {
        let t = table();
        assert_eq!(t.lookup(None), Some(&"default"));
        assert_eq!(t.lookup(Some("other.org")), Some(&"default"));
        let empty: HostTable<u8> = HostTable::new();
        assert_eq!(empty.lookup(Some("x")), None);
        assert_eq!(empty.lookup(None), None);
    }

    #[test]
    fn wildcard_suffixes_longest_first_never_the_whole_name() {
        let all = |h| wildcard_suffixes(h, usize::MAX).collect::<Vec<_>>();
        assert_eq!(all("a.b.c"), [".b.c", ".c"]);
        assert_eq!(all("a..b"), ["..b", ".b"]);
        assert_eq!(all(".c"), Vec::<&str>::new());
        assert_eq!(all("c"), Vec::<&str>::new());
        assert_eq!(all("a.c."), [".c.", "."]);
        let bounded: Vec<_> = wildcard_suffixes("a.b.example.com", 12).collect();
        assert_eq!(bounded, [".example.com", ".com"]);
        assert_eq!(wildcard_suffixes("a.b", 0).count(), 0);
    }

    #[test]
    fn a_name_of_many_dots_costs_only_the_longest_wildcard() {
        let mut t = HostTable::new();
        t.insert(HostPattern::parse("*.example.com").unwrap(), 1);
        let dots = ".".repeat(16_000);
        // Only the last 12 bytes are probed: one suffix, not 16,000.
        assert_eq!(wildcard_suffixes(&dots, t.longest_wildcard).count(), 12);
        assert_eq!(t.lookup_named(&dots), None);
        assert_eq!(t.lookup_named(&format!("{dots}x.example.com")), Some(&1));
    }

    /// The definition the hashed lookup must agree with: the exact name, else the longest
    /// wildcard suffix that is shorter than the name and ends it.
    fn by_definition<'a>(patterns: &'a [(HostPattern, usize)], host: &str) -> Option<&'a usize> {
        let mut exact = None;
        let mut wild: Option<(usize, &usize)> = None;
        for (pattern, value) in patterns {
            match pattern {
                HostPattern::Exact(name) if name == host => exact = Some(value),
                HostPattern::Wildcard(suffix)
                    if host.len() > suffix.len()
                        && host.ends_with(suffix.as_str())
                        && wild.is_none_or(|(len, _)| suffix.len() > len) =>
                {
                    wild = Some((suffix.len(), value))
                }
                _ => {}
            }
        }
        exact.or(wild.map(|(_, v)| v))
    }

    #[test]
    fn hashed_lookup_agrees_with_the_definition() {
        let patterns: Vec<(HostPattern, usize)> = [
            "a.example.com",
            "*.example.com",
            "*.b.example.com",
            "*.c.b.example.com",
            "b.example.com",
            "*.com",
            "*.x..y",
            "deep.c.b.example.com",
            "*.org",
        ]
        .iter()
        .enumerate()
        .map(|(i, p)| (HostPattern::parse(p).unwrap(), i))
        .collect();
        let mut table = HostTable::new();
        for (pattern, value) in &patterns {
            table.insert(pattern.clone(), *value);
        }
        let labels = ["a", "b", "c", "deep", "example", "com", "org", "x", "y", ""];
        let mut names = Vec::new();
        for one in labels {
            for two in labels {
                for three in labels {
                    names.push(format!("{one}.{two}.{three}"));
                    names.push(format!("{one}.{two}.{three}.example.com"));
                    names.push(format!("{two}.{three}"));
                }
            }
        }
        for name in &names {
            let host = normalize_host(name);
            assert_eq!(
                table.lookup_named(name),
                by_definition(&patterns, &host),
                "{name}"
            );
        }
    }

    #[test]
    fn malformed_patterns_rejected() {
        for bad in ["", "*", "*.", "a.*.com", "a b.com", "**.x"] {
            assert_eq!(HostPattern::parse(bad), None, "{bad:?}");
        }
    }
}
