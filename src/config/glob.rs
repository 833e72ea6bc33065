//! `include` pattern expansion: `*` and `?` in the last path component only.

use std::path::{Path, PathBuf};

/// Whether `name` matches `pattern`, where `*` matches any run of characters and `?` one character.
pub(crate) fn matches(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative wildcard matching with backtracking to the last `*`.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Whether a pattern has wildcards.
pub(crate) fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?'])
}

/// Expand one include pattern (already joined to the main file's directory) into sorted file paths.
///
/// A pattern without wildcards names one file, which must exist. A pattern with wildcards in its last
/// component matches regular files (and symlinks to them) in that directory, hidden files only when
/// the pattern itself starts with `.`; no match is fine (an empty `conf.d`). The error is a message
/// without location.
pub(crate) fn expand(pattern: &Path) -> Result<Vec<PathBuf>, String> {
    let file_pat = pattern
        .file_name()
        .and_then(|f| f.to_str())
        .ok_or_else(|| format!("{}: not a file pattern", pattern.display()))?;
    let dir = pattern.parent().unwrap_or(Path::new("/"));
    if has_wildcard(&dir.to_string_lossy()) {
        return Err(format!(
            "{}: wildcards (* and ?) are only supported in the last path component",
            pattern.display()
        ));
    }
    if !has_wildcard(file_pat) {
        return match std::fs::metadata(pattern) {
            Ok(m) if m.is_file() => Ok(vec![pattern.to_path_buf()]),
            Ok(_) => Err(format!("{}: not a regular file", pattern.display())),
            Err(e) => Err(format!("{}: {e}", pattern.display())),
        };
    }
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot list directory {}: {e}", dir.display()))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list directory {}: {e}", dir.display()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') && !file_pat.starts_with('.') {
            continue;
        }
        if !matches(file_pat, name) {
            continue;
        }
        let path = entry.path();
        // Follow symlinks: a link to a file counts, a directory does not.
        if std::fs::metadata(&path)
            .map(|m| m.is_file())
            .unwrap_or(false)
        {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_matching() {
        let cases = [
            ("*.toml", "a.toml", true),
            ("*.toml", ".toml", true),
            ("*.toml", "a.toml.bak", false),
            ("*", "", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*b*c", "xxbyyc", true),
            ("*b*c", "xxbyyd", false),
            ("10-*.toml", "10-www.toml", true),
            ("10-*.toml", "20-www.toml", false),
            ("exact.toml", "exact.toml", true),
            ("**x", "aax", true),
        ];
        for (p, n, want) in cases {
            assert_eq!(matches(p, n), want, "{p} vs {n}");
        }
    }

    #[test]
    fn expand_sorts_skips_hidden_and_dirs() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["b.toml", "a.toml", ".hidden.toml", "c.txt"] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        std::fs::create_dir(dir.path().join("d.toml")).unwrap();
        let got = expand(&dir.path().join("*.toml")).unwrap();
        assert_eq!(
            got,
            vec![dir.path().join("a.toml"), dir.path().join("b.toml")]
        );
        assert_eq!(
            expand(&dir.path().join("*.none")).unwrap(),
            Vec::<PathBuf>::new()
        );
        let err = expand(&dir.path().join("missing.toml")).unwrap_err();
        assert!(
            err.ends_with("missing.toml: No such file or directory (os error 2)"),
            "{err}"
        );
        let err = expand(&dir.path().join("*/x.toml")).unwrap_err();
        assert!(
            err.contains("only supported in the last path component"),
            "{err}"
        );
    }
}
