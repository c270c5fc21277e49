//! The repository stands alone: every link in the README and the docs points at a file
//! of the repository (or a heading), so a clone has nothing missing.

use std::path::{Path, PathBuf};

/// The Markdown files a user reads.
fn documents() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md"), root.join("SECURITY.md")];
    let docs = std::fs::read_dir(root.join("docs")).expect("docs/");
    files.extend(
        docs.filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|e| e == "md")),
    );
    files
}

/// The targets of the inline links `[text](target)` of a Markdown text.
fn link_targets(text: &str) -> Vec<&str> {
    text.match_indices("](")
        .filter_map(|(at, _)| {
            let rest = &text[at + 2..];
            rest.find(')').map(|end| &rest[..end])
        })
        .collect()
}

#[test]
fn every_link_in_the_readme_and_docs_stays_inside_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .canonicalize()
        .expect("repository root");
    let mut checked = 0;
    for document in documents() {
        let text = std::fs::read_to_string(&document).expect("readable");
        let dir = document.parent().expect("a directory");
        for target in link_targets(&text) {
            checked += 1;
            assert!(
                !target.contains("://") && !target.starts_with("mailto:"),
                "{}: {target} points outside the repository",
                document.display()
            );
            let file = target.split('#').next().unwrap_or_default();
            if file.is_empty() {
                continue;
            }
            let path = dir.join(file).canonicalize().unwrap_or_else(|_| {
                panic!(
                    "{}: {target} names no file of the repository",
                    document.display()
                )
            });
            assert!(
                path.starts_with(&root),
                "{}: {target} leaves the repository",
                document.display()
            );
        }
    }
    assert!(
        checked > 10,
        "only {checked} links found: is the parser right?"
    );
}
