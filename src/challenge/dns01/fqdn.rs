//! Challenge record names: `_acme-challenge.<name>.` and small name helpers.

/// The label RFC 8555 §8.4 puts in front of the identifier.
pub const CHALLENGE_LABEL: &str = "_acme-challenge";

/// Normalise a DNS name to lower-case, absolute form (`example.com.`).
///
/// A leading `*.` (wildcard) is removed: the challenge for `*.example.com` lives at
/// `_acme-challenge.example.com.`, the same name as for `example.com` (RFC 8555 §8.4).
pub fn normalize(name: &str) -> String {
    let name = name.trim().trim_start_matches("*.").to_ascii_lowercase();
    if name.ends_with('.') {
        name
    } else {
        format!("{name}.")
    }
}

/// The TXT record name for a DNS-01 challenge on `identifier` (wildcards use the base name).
pub fn challenge_name(identifier: &str) -> String {
    format!("{CHALLENGE_LABEL}.{}", normalize(identifier))
}

/// The name without its trailing dot, as most HTTP APIs want it.
pub fn unfqdn(name: &str) -> &str {
    name.strip_suffix('.').unwrap_or(name)
}

/// The parent names of `name`, from `name` itself up to (not including) the root.
///
/// `a.b.example.com.` gives `a.b.example.com.`, `b.example.com.`, `example.com.`, `com.`.
pub fn ancestors(name: &str) -> Vec<String> {
    let name = normalize(name);
    let mut out = Vec::new();
    let mut rest = name.as_str();
    while !rest.is_empty() && rest != "." {
        out.push(rest.to_string());
        rest = match rest.split_once('.') {
            Some((_, tail)) => tail,
            None => "",
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_name_for_plain_and_wildcard() {
        assert_eq!(
            challenge_name("Example.COM"),
            "_acme-challenge.example.com."
        );
        assert_eq!(
            challenge_name("*.example.com"),
            "_acme-challenge.example.com."
        );
        assert_eq!(
            challenge_name("www.example.com."),
            "_acme-challenge.www.example.com."
        );
    }

    #[test]
    fn ancestors_walk_up_to_tld() {
        assert_eq!(
            ancestors("a.example.com"),
            vec!["a.example.com.", "example.com.", "com."]
        );
        assert_eq!(unfqdn("example.com."), "example.com");
    }
}
