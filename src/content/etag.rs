//! Entity-tag lists (`If-None-Match: "a", W/"b"`) and their weak comparison (RFC 9110
//! §13.1.2), shared by static files and the response cache.

/// The entity tags of a list (`W/"a", "b"`) as (weak, opaque tag with its quotes);
/// `None` if malformed.
fn entity_tags(list: &str) -> Option<Vec<(bool, &str)>> {
    let mut tags = Vec::new();
    let mut rest = list;
    loop {
        rest = rest.trim_start_matches([',', ' ', '\t']);
        if rest.is_empty() {
            return Some(tags);
        }
        let (weak, tag) = match rest.strip_prefix("W/") {
            Some(tag) => (true, tag),
            None => (false, rest),
        };
        if !tag.starts_with('"') {
            return None;
        }
        let close = tag[1..].find('"')? + 1;
        tags.push((weak, &tag[..=close]));
        rest = tag[close + 1..].trim_start_matches([' ', '\t']);
        if !(rest.is_empty() || rest.starts_with(',')) {
            return None;
        }
    }
}

/// Whether an `If-None-Match` value matches `etag` (weak comparison; `*` matches any
/// existing file). A malformed value matches nothing.
pub fn none_match(value: &str, etag: &str) -> bool {
    if value.trim() == "*" {
        return true;
    }
    let ours = etag.strip_prefix("W/").unwrap_or(etag);
    entity_tags(value).is_some_and(|tags| tags.iter().any(|&(_, tag)| tag == ours))
}
