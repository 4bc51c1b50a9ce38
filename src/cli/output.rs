//! Plain-text output shared by `explain` and `report`: kubectl-like columns.

use std::fmt::Write as _;

/// Left-aligned columns separated by three spaces. The last column is not padded, and a cell of
/// it may hold several lines: each further line is printed under the first, indented to the
/// column.
pub fn columns(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let last = header.len() - 1;
    let indent: usize = widths[..last].iter().map(|w| w + 3).sum();
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        for (i, cell) in row.iter().enumerate() {
            if i == last {
                for (n, line) in cell.lines().enumerate() {
                    if n > 0 {
                        out.push('\n');
                        out.push_str(&" ".repeat(indent));
                    }
                    out.push_str(line);
                }
            } else {
                let _ = write!(out, "{cell:<width$}   ", width = widths[i]);
            }
        }
        // No trailing blanks when the last cell is empty.
        let trimmed = out.trim_end_matches(' ').len();
        out.truncate(trimmed);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_the_last_cell_may_span_lines() {
        let rows = vec![
            vec!["a".to_string(), "one\ntwo".to_string()],
            vec!["long-name".to_string(), "-".to_string()],
        ];
        assert_eq!(
            columns(&["NAME", "WHY"], &rows),
            "NAME        WHY\na           one\n            two\nlong-name   -\n"
        );
    }
}
