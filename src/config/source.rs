//! Config file texts, byte offsets → line:column, and key paths at an offset.

use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

use super::Diagnostic;

/// One config file's text, kept to turn spans into positions.
pub(crate) struct SourceFile {
    pub path: PathBuf,
    pub text: String,
}

impl SourceFile {
    /// A diagnostic at `span` in this file.
    pub fn diag(
        &self,
        span: &Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Diagnostic {
        Diagnostic {
            file: self.path.clone(),
            position: Some(line_col(&self.text, span.start)),
            key: Some(key.into()),
            message: message.into(),
        }
    }

    /// The `file:line:col` text of `span`, for messages that point at a second place.
    pub fn place(&self, span: &Range<usize>) -> String {
        let (l, c) = line_col(&self.text, span.start);
        format!("{}:{l}:{c}", self.path.display())
    }

    /// A diagnostic from a TOML syntax or type error, with the key path found at its span.
    pub fn toml_error(&self, err: &toml::de::Error) -> Diagnostic {
        let (position, key) = match err.span() {
            Some(span) => (
                Some(line_col(&self.text, span.start)),
                key_path_at(&self.text, span.start),
            ),
            None => (None, None),
        };
        Diagnostic {
            file: self.path.clone(),
            position,
            key,
            message: err.message().trim().to_string(),
        }
    }

    /// The directory relative paths in this file are resolved against.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }
}

/// 1-based line and column (counted in characters) of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = text[line_start..offset].chars().count() + 1;
    (line, col)
}

/// The dotted key path (`certificate.www.output.dir`, `issuer.le.solver[1].dns01`) of the deepest key
/// or value at `offset` (best effort when the text has syntax errors).
pub(crate) fn key_path_at(text: &str, offset: usize) -> Option<String> {
    // Recoverable parsing still yields the keys around a syntax error.
    let (table, _errors) = DeTable::parse_recoverable(text);
    let mut path = Vec::new();
    if walk_table(table.get_ref(), offset, &mut path) {
        Some(render(&path))
    } else {
        None
    }
}

/// One key as written in a dotted path: bare when possible, quoted otherwise.
pub(crate) fn key_seg(k: &str) -> String {
    let bare = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        k.to_string()
    } else {
        format!("{k:?}")
    }
}

enum Seg {
    Key(String),
    Index(usize),
}

fn render(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&key_seg(k));
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

fn walk_table(table: &DeTable<'_>, offset: usize, path: &mut Vec<Seg>) -> bool {
    // A key or value that contains the offset directly.
    for (k, v) in table.iter() {
        if k.span().contains(&offset) {
            path.push(Seg::Key(k.get_ref().to_string()));
            return true;
        }
        if v.span().contains(&offset) {
            path.push(Seg::Key(k.get_ref().to_string()));
            walk_value(v.get_ref(), offset, path);
            return true;
        }
    }
    // Tables written as `[a.b]` headers do not span their bodies: look inside them.
    for (k, v) in table.iter() {
        path.push(Seg::Key(k.get_ref().to_string()));
        if walk_value(v.get_ref(), offset, path) {
            return true;
        }
        path.pop();
    }
    false
}

fn walk_value(value: &DeValue<'_>, offset: usize, path: &mut Vec<Seg>) -> bool {
    match value {
        DeValue::Table(t) => walk_table(t, offset, path),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(Seg::Index(i));
                if item.span().contains(&offset) {
                    walk_value(item.get_ref(), offset, path);
                    return true;
                }
                if walk_value(item.get_ref(), offset, path) {
                    return true;
                }
                path.pop();
            }
            false
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_chars() {
        let t = "ab\ncdé\nf";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 3), (2, 1));
        assert_eq!(line_col(t, 7), (2, 4)); // after the 2-byte é
        assert_eq!(line_col(t, 100), (3, 2));
    }

    #[test]
    fn key_paths() {
        let t = "a = 1\n[x.y]\nb = \"s\"\n[[x.z]]\nc = 1\n[[x.z]]\nd = { e = 2 }\n";
        let at = |needle: &str| key_path_at(t, t.find(needle).unwrap()).unwrap();
        assert_eq!(at("a ="), "a");
        assert_eq!(at("\"s\""), "x.y.b");
        assert_eq!(at("c ="), "x.z[0].c");
        assert_eq!(at("e ="), "x.z[1].d.e");
        assert_eq!(at("2 }"), "x.z[1].d.e");
    }
}
