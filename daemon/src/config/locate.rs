//! Where in the file a key is: the line and column an error points at, for
//! a syntax error (the key on its line) and for a bad value (the value's span
//! in the parsed document).

use std::ops::Range;

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The entries of a table (`[name]`, dotted keys or `{ inline }`), with their keys' spans.
fn entries(table: &dyn toml_edit::TableLike) -> Vec<(&toml_edit::Key, &toml_edit::Item)> {
    table
        .iter()
        .filter_map(|(k, _)| table.get_key_value(k))
        .collect()
}

/// The dotted key of the innermost key or value whose span holds byte `offset`.
pub(super) fn key_at(root: &toml_edit::Table, offset: usize) -> Option<String> {
    fn contains(span: Option<Range<usize>>, offset: usize) -> bool {
        span.is_some_and(|s| s.start <= offset && offset < s.end.max(s.start + 1))
    }
    fn search(table: &dyn toml_edit::TableLike, offset: usize, path: &mut Vec<String>) -> bool {
        for (key, item) in entries(table) {
            path.push(key.get().to_owned());
            let found = contains(key.span(), offset)
                || item
                    .as_table_like()
                    .is_some_and(|t| search(t, offset, path))
                || contains(item.span(), offset);
            if found {
                return true;
            }
            path.pop();
        }
        false
    }
    let mut path = Vec::new();
    search(root, offset, &mut path).then(|| path.join("."))
}

/// The span of the value at dotted `key` (and array element `index`) in the document.
pub(super) fn span_of(
    root: &toml_edit::Table,
    key: &str,
    index: Option<usize>,
) -> Option<Range<usize>> {
    let mut parts = key.split('.');
    let mut item = root.get(parts.next()?)?;
    for part in parts {
        item = item.as_table_like()?.get(part)?;
    }
    let element = index.and_then(|i| item.as_array()?.get(i));
    element.and_then(|v| v.span()).or_else(|| item.span())
}

/// For a syntax error: the dotted key written on the line that holds byte `offset`.
pub(super) fn key_on_line(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let (lhs, _) = line.split_once('=')?;
    let key = lhs.trim();
    let bare = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
    };
    if !bare(key) {
        return None;
    }
    let table = text[..line_start].lines().rev().find_map(|l| {
        let l = l.trim();
        let inner = l
            .strip_prefix('[')?
            .split(']')
            .next()?
            .trim_matches('[')
            .trim();
        bare(inner).then(|| inner.to_owned())
    });
    Some(match table {
        Some(t) => format!("{t}.{key}"),
        None => key.to_owned(),
    })
}
