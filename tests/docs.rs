//! The guides cannot rot:
//!
//! - every file under `src/`, `tests/`, `benches/`, `scripts/` and `crates/` is named, by its path
//!   from the repository root, in DEVELOPING.md (its architecture table);
//! - every repository path that a Markdown file names (README.md, DEVELOPING.md, the READMEs of
//!   `config/`, `examples/`, `deploy/kyverno/`, `tests/control-plane/`, …) exists, from the
//!   repository root or from the file's own directory, so a moved or deleted file cannot stay in
//!   the docs.
//!
//! No cluster, no network: this reads files only.

use std::fs;
use std::path::{Path, PathBuf};

/// Directories whose every file DEVELOPING.md must name.
const DOCUMENTED: [&str; 5] = ["src", "tests", "benches", "scripts", "crates"];

/// A word of a Markdown file starting with one of these is a repository path that must exist.
const REPOSITORY_PATHS: [&str; 11] = [
    "src/",
    "tests/",
    "benches/",
    "scripts/",
    "crates/",
    "deploy/",
    "config/",
    "examples/",
    "notes/",
    ".ci/",
    "target/",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every file under `dir`, as a path from the repository root with `/` separators. Skips hidden
/// entries (editor and tool state) and build output.
fn files_under(dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let entry = entry.expect("read_dir entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name.ends_with('~') || name == "target" {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            let relative = path
                .strip_prefix(root())
                .expect("under the repository root");
            out.push(relative.to_string_lossy().replace('\\', "/"));
        }
    }
}

/// Whether `text` names `path` as a whole path: not as the tail of a longer one
/// (`src/lib.rs` inside `crates/x/src/lib.rs`) nor as the head of one (`src/cli` in `src/cli/mod.rs`
/// would not name `src/cli`).
fn names(text: &str, path: &str) -> bool {
    let is_path_char = |c: char| c.is_alphanumeric() || matches!(c, '/' | '-' | '_' | '.');
    text.match_indices(path).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + path.len()..].chars().next();
        let after_ok = match after {
            None => true,
            // a sentence may end right after the path
            Some('.') => !text[at + path.len() + 1..]
                .chars()
                .next()
                .is_some_and(is_path_char),
            Some(c) => !is_path_char(c),
        };
        !before.is_some_and(is_path_char) && after_ok
    })
}

#[test]
fn developing_md_names_every_source_test_bench_script_and_crate_file() {
    let guide = fs::read_to_string(root().join("DEVELOPING.md")).expect("DEVELOPING.md");
    let mut files = Vec::new();
    for dir in DOCUMENTED {
        files_under(&root().join(dir), &mut files);
    }
    assert!(
        files.iter().any(|f| f == "src/lib.rs"),
        "the walk found no src/lib.rs: {files:?}"
    );
    let missing: Vec<&String> = files.iter().filter(|f| !names(&guide, f)).collect();
    assert!(
        missing.is_empty(),
        "DEVELOPING.md does not name these files (add a row to its architecture table, with the \
         full path from the repository root):\n  {}",
        missing
            .iter()
            .map(|f| f.as_str())
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}

/// The repository paths a Markdown text names: words starting with one of [`REPOSITORY_PATHS`],
/// split at whitespace, backticks, brackets, parentheses, quotes and commas; without a trailing
/// `#anchor` or sentence punctuation. Patterns and placeholders (`*`, `{`, `<`, `$`) are skipped.
fn repository_paths(text: &str) -> Vec<String> {
    text.split(|c: char| c.is_whitespace() || "`()[]\"',|=".contains(c))
        .map(|word| word.split('#').next().unwrap_or(""))
        .map(|word| word.trim_end_matches(['.', ':', ';', '!', '?']))
        .filter(|word| REPOSITORY_PATHS.iter().any(|p| word.starts_with(p)))
        .filter(|word| !word.contains(['*', '{', '<', '$']))
        // build output is not in the repository
        .filter(|word| !word.starts_with("target/"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_repository_path_the_docs_name_exists() {
    let mut markdown = Vec::new();
    files_under(&root(), &mut markdown);
    markdown.retain(|f| f.ends_with(".md"));
    assert!(
        markdown.iter().any(|f| f == "DEVELOPING.md"),
        "{markdown:?}"
    );
    let mut dangling = Vec::new();
    for file in &markdown {
        let text = fs::read_to_string(root().join(file)).expect("read a Markdown file");
        let dir = Path::new(file).parent().unwrap_or(Path::new(""));
        for path in repository_paths(&text) {
            // from the repository root, or (in a nested README) from the file's own directory
            if !root().join(&path).exists() && !root().join(dir).join(&path).exists() {
                dangling.push(format!("{file}: {path}"));
            }
        }
    }
    assert!(
        dangling.is_empty(),
        "these Markdown files name repository paths that do not exist:\n  {}",
        dangling.join("\n  ")
    );
}

#[test]
fn names_matches_whole_paths_only() {
    assert!(names("| `src/lib.rs` | x |", "src/lib.rs"));
    assert!(names("see src/lib.rs.", "src/lib.rs"));
    assert!(!names("`crates/test-support/src/lib.rs`", "src/lib.rs"));
    assert!(!names("`src/cli/mod.rs`", "src/cli"));
    assert!(!names("`src/lib.rs.bak`", "src/lib.rs"));
}

#[test]
fn repository_paths_skips_patterns_and_anchors() {
    let text = "[x](examples/README.md#what) `tests/*.rs` `kubernetes/go.{mod,sum}` \
                `tests/control-plane/build.sh regen`, deploy/manifests/. target/debug/x";
    assert_eq!(
        repository_paths(text),
        [
            "examples/README.md",
            "tests/control-plane/build.sh",
            "deploy/manifests/"
        ]
    );
}
