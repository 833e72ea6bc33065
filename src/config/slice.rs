//! The fast path of [`super::load_one`]: before the TOML parse, the tables of every certificate but
//! the one asked about are blanked out of each file's text, line for line, so parsing and
//! validation see only the top level, the issuers and that certificate, each at its own line (every
//! `file:line:col` in a message stays what the full parse gives). With 10,000 certificates the parse
//! is most of the time `status NAME` takes.
//!
//! A line scanner finds the table headers outside strings (`"…"`, `'…'`, `"""…"""`, `'''…'''`),
//! comments and multi-line arrays or inline tables. What it does not fully understand makes it give
//! up, and [`super::load_one`] takes the full path: a form that could define a certificate outside a
//! `[certificate.NAME…]` table (`[certificate]`, `[[certificate.…]]`, a top-level `certificate…`
//! key), a header or top-level key it cannot read (e.g. a quoted key with an escape), an
//! unterminated string or bracket, one certificate header written twice in a file or one name in two
//! files (reported as by the full path), and a name no header defines. A config the fast path finds
//! invalid is loaded again by the full path too, so the messages are exactly the full path's.
//!
//! What the fast path does not see: syntax and type errors inside the other certificates' tables,
//! which, like their other problems, are left to `check`, `run` and `renew`.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::path::Path;

use super::{Config, ConfigError, validate};

/// [`super::load_one`] on the reduced texts: `Some` only when the config is valid and the scanner
/// understood every file and found `name`.
pub(super) fn load_one(text: &str, path: &Path, name: &str) -> Option<Config> {
    reduced(text, path, name)?.ok()
}

/// Parse and validate the reduced texts; `None` when the scanner was in doubt or found no `name`.
fn reduced(text: &str, path: &Path, name: &str) -> Option<Result<Config, ConfigError>> {
    let mut slicer = Slicer::new(name);
    let main = slicer.reduce(text)?;
    // After a doubt the rest is not used: an empty text parses fastest.
    let result = validate::build_with(&main, path, Some(name), &mut |t| {
        slicer.reduce(&t).unwrap_or_default()
    });
    slicer.trusted().then_some(result)
}

/// Reduces the files of one load, in order, for one certificate.
struct Slicer<'a> {
    name: &'a str,
    /// The file (by order) each certificate name has its headers in, by the name's hash (a
    /// collision only costs the fast path).
    seen: HashMap<u64, usize, Fnv>,
    files: usize,
    found: bool,
    doubt: bool,
}

impl<'a> Slicer<'a> {
    fn new(name: &'a str) -> Self {
        Self {
            name,
            seen: HashMap::default(),
            files: 0,
            found: false,
            doubt: false,
        }
    }

    /// The next file's text with the other certificates' tables blanked; `None` (and from then on
    /// [`Slicer::trusted`] false) when the scanner is in doubt.
    fn reduce(&mut self, text: &str) -> Option<String> {
        self.files += 1;
        let reduced = if self.doubt {
            None
        } else {
            scan(text).and_then(|headers| {
                let keep = self.keep(&headers)?;
                Some(blank(text, &headers, &keep))
            })
        };
        self.doubt |= reduced.is_none();
        reduced
    }

    /// True when every file was understood and `name` found: the reduced texts stand for the whole.
    fn trusted(&self) -> bool {
        self.found && !self.doubt
    }

    /// Which tables to keep (all but the other certificates'); `None` for a certificate header
    /// written twice in this file, or a name that an earlier file has headers for.
    fn keep(&mut self, headers: &[Header]) -> Option<Vec<bool>> {
        let mut written = HashSet::with_capacity_and_hasher(headers.len(), Fnv::default());
        self.seen.reserve(headers.len());
        let mut keep = Vec::with_capacity(headers.len());
        for h in headers {
            let Owner::Certificate(name) = owner(h)? else {
                keep.push(true);
                continue;
            };
            let file = *self.seen.entry(hash(name)).or_insert(self.files);
            if file != self.files || !written.insert(hash(&h.keys)) {
                return None;
            }
            self.found |= name == self.name;
            keep.push(name == self.name);
        }
        Some(keep)
    }
}

/// FNV-1a: the sets above hash thousands of short keys, which SipHash makes a visible cost.
type Fnv = BuildHasherDefault<FnvHasher>;

struct FnvHasher(u64);

impl Default for FnvHasher {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for FnvHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

fn hash<T: Hash + ?Sized>(value: &T) -> u64 {
    let mut h = FnvHasher::default();
    value.hash(&mut h);
    h.finish()
}

/// A table header: where its line starts, its keys (unquoted), and `[[…]]` or not.
#[derive(Debug, PartialEq)]
struct Header<'t> {
    start: usize,
    keys: Vec<&'t str>,
    array: bool,
}

enum Owner<'h> {
    Other,
    Certificate(&'h str),
}

/// Whose table a header opens; `None` for `[certificate]` and `[[certificate.…]]`.
fn owner<'t>(h: &Header<'t>) -> Option<Owner<'t>> {
    match h.keys.as_slice() {
        [first, ..] if *first != "certificate" => Some(Owner::Other),
        [_, name, ..] if !h.array => Some(Owner::Certificate(name)),
        _ => None,
    }
}

/// `text` with the lines of the tables not kept made empty (their newlines stay).
fn blank(text: &str, headers: &[Header], keep: &[bool]) -> String {
    let mut out = String::with_capacity(text.len());
    out.push_str(&text[..headers.first().map_or(text.len(), |h| h.start)]);
    let ends = headers.iter().skip(1).map(|h| h.start).chain([text.len()]);
    for ((h, end), keep) in headers.iter().zip(ends).zip(keep) {
        let table = &text[h.start..end];
        if *keep {
            out.push_str(table);
        } else {
            let lines = table.bytes().filter(|b| *b == b'\n').count();
            out.extend(std::iter::repeat_n('\n', lines));
        }
    }
    out
}

/// Every table header of `text`, in order; `None` when the text is not understood, or a top-level
/// key (before the first header) is `certificate…`.
fn scan(text: &str) -> Option<Vec<Header<'_>>> {
    let b = text.as_bytes();
    let mut headers = Vec::new();
    let mut i = 0;
    // At the start of a line, outside any value.
    loop {
        let line = i;
        i = skip_ws(b, i);
        match b.get(i) {
            None => return Some(headers),
            Some(b'[') => {
                let (keys, array, next) = header(text, i)?;
                headers.push(Header {
                    start: line,
                    keys,
                    array,
                });
                i = next;
            }
            Some(b'#' | b'\r' | b'\n') => i = after_newline(b, to_newline(b, i)?),
            Some(_) => {
                if headers.is_empty() && keys(text, i)?.0[0] == "certificate" {
                    return None;
                }
                i = value_line_end(b, i)?;
            }
        }
    }
}

/// A header at `text[i] == '['`: its keys, whether `[[…]]`, and where the next line starts.
fn header(text: &str, i: usize) -> Option<(Vec<&str>, bool, usize)> {
    let b = text.as_bytes();
    let array = b.get(i + 1) == Some(&b'[');
    let (keys, j) = keys(text, i + 1 + usize::from(array))?;
    let close: &[u8] = if array { b"]]" } else { b"]" };
    if !b[j..].starts_with(close) {
        return None;
    }
    let j = skip_ws(b, j + close.len());
    if !matches!(b.get(j), None | Some(b'#' | b'\r' | b'\n')) {
        return None;
    }
    Some((keys, array, after_newline(b, to_newline(b, j)?)))
}

/// A dotted key from `i` (whitespace around it allowed): its parts unquoted, and where it ends.
fn keys(text: &str, mut i: usize) -> Option<(Vec<&str>, usize)> {
    let b = text.as_bytes();
    let mut keys = Vec::new();
    loop {
        let (key, next) = key(text, skip_ws(b, i))?;
        keys.push(key);
        i = skip_ws(b, next);
        if b.get(i) != Some(&b'.') {
            return Some((keys, i));
        }
        i += 1;
    }
}

/// One simple key at `i`: bare, `"quoted"` without escapes, or `'literal'`.
fn key(text: &str, i: usize) -> Option<(&str, usize)> {
    let b = text.as_bytes();
    let (start, end, next) = match b.get(i)? {
        q @ (b'"' | b'\'') => {
            let len = b[i + 1..]
                .iter()
                .position(|c| c == q || matches!(c, b'\\' | b'\n' | b'\r'))?;
            let end = i + 1 + len;
            (b[end] == *q).then_some((i + 1, end, end + 1))?
        }
        _ => {
            let bare = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-');
            let len = b[i..].iter().take_while(|c| bare(c)).count();
            (len > 0).then_some((i, i + len, i + len))?
        }
    };
    // The bounds are next to ASCII bytes, so on character boundaries.
    Some((&text[start..end], next))
}

/// From inside a `key = value` line to the start of the next line outside the value (multi-line
/// strings, arrays and inline tables followed); `None` when something is left open.
fn value_line_end(b: &[u8], mut i: usize) -> Option<usize> {
    let mut depth = 0usize;
    while let Some(n) = b[i..].iter().position(|c| SPECIAL[usize::from(*c)]) {
        i += n;
        match b[i] {
            b'"' | b'\'' => i = string_end(b, i)?,
            b'#' => i = to_newline(b, i)?,
            b'[' | b'{' => {
                depth += 1;
                i += 1;
            }
            b']' | b'}' => {
                depth = depth.checked_sub(1)?;
                i += 1;
            }
            _ if depth == 0 => return Some(i + 1),
            _ => i += 1,
        }
    }
    (depth == 0).then_some(b.len())
}

/// The bytes that matter in a value: a table lookup is cheaper than eight comparisons a byte.
static SPECIAL: [bool; 256] = {
    let mut table = [false; 256];
    let bytes = *b"\"'#[]{}\n";
    let mut i = 0;
    while i < bytes.len() {
        table[bytes[i] as usize] = true;
        i += 1;
    }
    table
};

/// Just past the string that opens at `b[i]` (a quote); `None` when it is not closed.
fn string_end(b: &[u8], i: usize) -> Option<usize> {
    let q = b[i];
    let basic = q == b'"';
    let multi = b[i..].starts_with(&[q, q, q]);
    let special = |c: &u8| *c == q || (basic && *c == b'\\') || (!multi && *c == b'\n');
    let mut j = i + if multi { 3 } else { 1 };
    loop {
        j += b.get(j..)?.iter().position(special)?;
        match b[j] {
            b'\\' => j += 2,
            b'\n' => return None,
            _ if !multi => return Some(j + 1),
            _ if b[j..].starts_with(&[q, q, q]) => {
                // Up to two more quotes belong to the content: `"""a"""""` is `a""`.
                let run = b[j..].iter().take_while(|c| **c == q).count();
                return (run <= 5).then_some(j + run);
            }
            _ => j += 1,
        }
    }
}

/// The index of the next `\n` from `i`, or the end of the text; `None` at a lone `\r`.
fn to_newline(b: &[u8], i: usize) -> Option<usize> {
    let end = b[i..]
        .iter()
        .position(|c| *c == b'\n')
        .map_or(b.len(), |n| i + n);
    let cr = b[i..end].iter().position(|c| *c == b'\r');
    cr.is_none_or(|n| i + n + 1 == end).then_some(end)
}

fn after_newline(b: &[u8], newline: usize) -> usize {
    newline + usize::from(newline < b.len())
}

fn skip_ws(b: &[u8], i: usize) -> usize {
    i + b[i.min(b.len())..]
        .iter()
        .take_while(|c| matches!(c, b' ' | b'\t'))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::write_files;

    /// The top level and one issuer, with an include pattern; certificates are appended.
    const TOP: &str = r#"state_dir = "/var/lib/certkeeper"
include = ["conf.d/*.toml"]

[issuer.le]
directory = "https://127.0.0.1:14000/dir"
contact = ["mailto:admin@example.com"]

[[issuer.le.solver]]
http01 = {}
"#;

    /// A valid `[certificate.NAME]` table.
    fn cert(name: &str) -> String {
        format!(
            "\n[certificate.{name}]\nissuer = \"le\"\ndomains = [\"{name}.example.com\"]\noutput = {{ dir = \"/srv/tls/{name}\" }}\n"
        )
    }

    /// A load's outcome as text: the whole validated config, or the message.
    fn outcome(r: Result<Config, ConfigError>) -> Result<String, String> {
        r.map(|c| format!("{c:?}")).map_err(|e| e.to_string())
    }

    /// The full path (every table parsed), as `load_one` did before this module.
    fn full(path: &Path, name: &str) -> Result<String, String> {
        let text = std::fs::read_to_string(path).unwrap();
        outcome(validate::build(&text, path, Some(name)))
    }

    /// The fast path without the fallback; `None` when it is in doubt.
    fn fast(path: &Path, name: &str) -> Option<Result<String, String>> {
        let text = std::fs::read_to_string(path).unwrap();
        reduced(&text, path, name).map(outcome)
    }

    /// The fast path is taken for `name` and gives what the full path gives; returns that.
    fn same(main: &str, includes: &[(&str, &str)], name: &str) -> Result<String, String> {
        let (_dir, path) = write_files(main, includes);
        let full = full(&path, name);
        let fast = fast(&path, name).unwrap_or_else(|| panic!("in doubt about:\n{main}"));
        assert_eq!(fast, full, "config:\n{main}");
        assert_eq!(outcome(super::super::load_one(&path, name)), full);
        full
    }

    /// The fast path gives up on `name`; `load_one` gives what the full path gives.
    fn doubt(main: &str, includes: &[(&str, &str)], name: &str) -> Result<String, String> {
        let (_dir, path) = write_files(main, includes);
        assert!(fast(&path, name).is_none(), "not in doubt about:\n{main}");
        let full = full(&path, name);
        assert_eq!(outcome(super::super::load_one(&path, name)), full);
        full
    }

    #[test]
    fn the_target_first_middle_or_last() {
        let main = format!("{TOP}{}{}{}", cert("a"), cert("b"), cert("c"));
        for name in ["a", "b", "c"] {
            let got = same(&main, &[], name).unwrap();
            assert!(got.contains(&format!("\"{name}.example.com\"")), "{got}");
        }
    }

    #[test]
    fn blanking_keeps_every_line_in_place() {
        let text = format!("{TOP}{}{}{}", cert("a"), cert("b"), cert("c"));
        let mut slicer = Slicer::new("b");
        let out = slicer.reduce(&text).unwrap();
        assert!(slicer.trusted());
        let (lines, kept): (Vec<_>, Vec<_>) = (text.lines().collect(), out.lines().collect());
        assert_eq!(kept.len(), lines.len());
        let mut other = false;
        for (line, kept) in lines.iter().zip(&kept) {
            if line.starts_with('[') {
                other = line.starts_with("[certificate.a") || line.starts_with("[certificate.c");
            }
            assert_eq!(*kept, if other { "" } else { *line });
        }
        assert!(out.contains("[certificate.b]\nissuer = \"le\""));
    }

    #[test]
    fn headers_in_comments_strings_arrays_and_inline_tables() {
        let tricky = r#"
# [certificate.t]
[certificate.a] # [certificate.t]
issuer = "le" # [certificate.t]
domains = [
  "a.example.com", # ] [certificate.t]
  "www.a.example.com",
]
reload = ["""
[certificate.t]
domains = ["evil"]
""", '''
[certificate.t]''', "[certificate.t]", 'x]', "\"]\\"]
output = { dir = "/srv/tls/a", owner = "r}o]ot" }
"#;
        let main = format!("{TOP}{tricky}{}", cert("t"));
        let got = same(&main, &[], "t").unwrap();
        assert!(
            got.contains("\"t.example.com\"") && !got.contains("evil"),
            "{got}"
        );
        // The other way round: the tricky one is the target.
        let got = same(&main, &[], "a").unwrap();
        assert!(
            got.contains("[certificate.t]\\ndomains = [\\\"evil\\\"]\\n"),
            "{got}"
        );
    }

    #[test]
    fn quoted_keys_sub_tables_and_crlf() {
        let main = format!(
            "{TOP}{}\n[ certificate . \"t\" ]\nissuer = \"le\"\ndomains = [\"t.example.com\"]\n\
             \n[certificate.'o-1'.output]\ndir = \"/srv/tls/o1\"\n[certificate.'o-1']\ndomains = [\"o.example.com\"]\n\
             [certificate.t.output]\r\ndir = \"/srv/tls/t\"\r\nkey_mode = \"0640\"\r\n\
             [certificate.\"x.y\"]\ndomains = [\"x.example.com\"]\noutput = {{ dir = \"/srv/tls/xy\" }}\n",
            cert("a")
        );
        let got = same(&main, &[], "t").unwrap();
        assert!(
            got.contains("/srv/tls/t") && !got.contains("/srv/tls/o1"),
            "{got}"
        );
        same(&main, &[], "o-1").unwrap();
        same(&main, &[], "x.y").unwrap();
    }

    #[test]
    fn includes() {
        let main = format!("{TOP}{}", cert("a"));
        let one = format!("{}{}", cert("b"), cert("t"));
        let zs = "[issuer.zs]\ndirectory = \"https://127.0.0.1:14001/dir\"\n[[issuer.zs.solver]]\nhttp01 = {}\n";
        let two = format!("{zs}{}", cert("c"));
        let includes = [("1.toml", one.as_str()), ("2.toml", two.as_str())];
        for name in ["a", "b", "t", "c"] {
            let got = same(&main, &includes, name).unwrap();
            assert!(got.contains("\"zs\""), "{got}");
        }
    }

    #[test]
    fn other_certificates_invalid_or_broken() {
        // Invalid, as load_one has always allowed.
        let bad = "\n[certificate.bad]\nissuer = \"nope\"\ndomains = [\"-x\"]\noutput = { dir = \"rel\" }\n";
        let main = format!("{TOP}{}{bad}{}", cert("a"), cert("t"));
        same(&main, &[], "t").unwrap();
        // Not even of the right type: the full path stops at it, the fast path does not see it
        // (`check`, `run` and `renew` report it).
        let broken = "\n[certificate.bad]\ndomain = \"x\"\noutput = 3\n";
        let (_dir, path) = write_files(&format!("{TOP}{}{broken}{}", cert("a"), cert("t")), &[]);
        assert!(
            full(&path, "t")
                .unwrap_err()
                .contains("unknown field `domain`")
        );
        let got = fast(&path, "t").unwrap().unwrap();
        assert_eq!(outcome(super::super::load_one(&path, "t")).unwrap(), got);
        assert!(super::super::load(&path).is_err());
        // Nor does it see the TOML errors of two tables of another certificate that clash.
        let clash = "\n[certificate.bad.output]\ndir = \"/x\"\n[certificate.bad]\noutput = { dir = \"/y\" }\n";
        let (_dir, path) = write_files(&format!("{TOP}{clash}{}", cert("t")), &[]);
        assert!(full(&path, "t").is_err());
        assert!(fast(&path, "t").unwrap().is_ok());
    }

    #[test]
    fn a_broken_target_is_reported_at_the_same_place() {
        let cases = [
            "[certificate.t]\nissuer = \"le\"\ndomains = [\"-bad\"]\noutput = { dir = \"rel\" }\n",
            "[certificate.t]\nissuer = \"nope\"\ndomains = [\"t.example.com\"]\noutput = { dir = \"/t\" }\n",
            "[certificate.t]\ndomains = \"t.example.com\"\noutput = { dir = \"/t\" }\n",
            "[certificate.t]\ndomains = [\"t.example.com\"]\noutput = { dir = \"/t\", mode = 1 }\n",
            "[certificate.t]\ndomains = [\"t.example.com\"]\n",
            "[certificate.t]\ndomains = [\"t.example.com\"]\noutput = { dir = \"/t\" }\n[certificate.t.output]\n",
        ];
        for case in cases {
            let main = format!("{TOP}{}{}\n{case}{}", cert("a"), cert("b"), cert("c"));
            let err = same(&main, &[], "t").unwrap_err();
            assert!(err.contains("certkeeper.toml:2"), "{err}");
            let include = format!("{}\n{case}{}", cert("b"), cert("c"));
            same(&format!("{TOP}{}", cert("a")), &[("1.toml", &include)], "t").unwrap_err();
        }
    }

    #[test]
    fn problems_outside_the_certificates_are_at_the_same_place() {
        let main = format!(
            "{TOP}{}{}\n[issuer.late]\ndirectory = \"ftp://x\"\n[[issuer.late.solver]]\nhttp01 = {{}}\n{}",
            cert("a"),
            cert("t"),
            cert("c")
        );
        let err = same(&main, &[], "t").unwrap_err();
        assert!(err.ends_with("certkeeper.toml:22:13: issuer.late.directory: \"ftp://x\" is neither a known CA (letsencrypt, letsencrypt-staging, zerossl) nor an https:// URL of an ACME directory"), "{err}");
    }

    #[test]
    fn duplicates_take_the_full_path() {
        let twice = format!("{TOP}{}{}{}", cert("a"), cert("t"), cert("a"));
        assert!(doubt(&twice, &[], "t").is_err());
        let sub = format!(
            "{TOP}{}\n[certificate.t.output]\ndir = \"/x\"\n{}",
            cert("a"),
            cert("t")
        );
        // The target's own tables clash: the same TOML error at the same place as the full path.
        assert!(same(&sub, &[], "t").is_err());
        let main = format!("{TOP}{}{}", cert("a"), cert("t"));
        let err = doubt(&main, &[("1.toml", &cert("a"))], "t").unwrap_err();
        assert!(
            err.contains("defined twice") || err.contains("already"),
            "{err}"
        );
        doubt(&main, &[("1.toml", &cert("t"))], "t").unwrap_err();
    }

    #[test]
    fn forms_not_understood_take_the_full_path() {
        let c = cert("t");
        let cases = [
            format!("{TOP}{c}\n[certificate]\nx = {{ domains = [\"x.example.com\"] }}\n"),
            format!("certificate.x = {{ domains = [] }}\n{TOP}{c}"),
            format!("\"certificate\" = {{}}\n{TOP}{c}"),
            format!("{TOP}{c}\n[[certificate.x]]\ndomains = []\n"),
            format!("{TOP}{c}\n[certificate.\"\\u0078\"]\ndomains = []\n"),
            format!("{TOP}{c}\n[certificate.x]\nreload = [\"unterminated]\n"),
            format!("{TOP}{c}\n[certificate.x]\nreload = [\"\"\"never closed]\n"),
            format!("{TOP}{c}\n[certificate.x]\nreload = [\n"),
            format!("{TOP}{c}\n[certificate.x] junk\n"),
            format!("{TOP}{}", cert("a")),
        ];
        for main in &cases {
            let _ = doubt(main, &[], "t");
        }
        // An include not understood: the whole load is redone.
        doubt(&format!("{TOP}{c}"), &[("1.toml", "[certificate]\n")], "t").unwrap();
    }

    #[test]
    fn scan_reads_headers() {
        let text = "a = 1\n [ x . 'y z' . \"w\" ] # c\n[[ v ]]\nk = \"\"\"\n[no]\n\"\"\"\"\"\n[u]";
        let got = scan(text).unwrap();
        let keys: Vec<_> = got.iter().map(|h| (h.keys.join("|"), h.array)).collect();
        assert_eq!(
            keys,
            [
                ("x|y z|w".into(), false),
                ("v".into(), true),
                ("u".into(), false)
            ]
        );
        assert_eq!(got[0].start, 6);
        for bad in [
            "[a", "[a.]", "[a..b]", "[]", "[a] b", "x = ]", "x = '\n'", "# \r x\n",
        ] {
            assert_eq!(scan(bad), None, "{bad:?}");
        }
    }
}
