//! Every repository path that `README.md` and `docs/*.md` name exists.
//!
//! Files move (a module becomes a crate, a binary changes crates) and the prose that
//! names them rots without anyone noticing. This test reads the documents, takes the
//! words that look like repository paths from code spans, code blocks and link targets,
//! and checks each against the working tree. It starts no service.
//!
//! What counts as a path, and how it is checked:
//! - a word whose first component is a top-level folder of the repository (`api/…`,
//!   `store/…`, `docs/…`), or a top-level file (`Cargo.toml`): it must exist at that
//!   place under the repository root;
//! - any other word ending in a source or document extension (`ws.rs`, `http/ws.rs`,
//!   `schema.graphql`): the documents use such short names inside a sentence or table
//!   row that says which crate they are about, so it must be the end of some path in
//!   the tree;
//! - a link target: relative to the document that holds it, as a Markdown viewer reads it.
//!
//! Skipped: URLs, absolute paths (endpoints such as `/graphql`, `/tmp/…`), globs,
//! placeholders (`<prefix>`, `…`), shell variables, and run-time output (`data/`,
//! `target/`). A path that leaves the repository (`../…`) always fails: readers get the
//! repository, nothing beside it.

use std::{
    collections::BTreeSet,
    fs,
    path::{Component, Path, PathBuf},
};

/// Folders at the top of the repository (a new one is added here). Listed rather than
/// read from disk so that a document naming a crate missing from the tree fails instead
/// of being skipped.
const TOP_LEVEL_FOLDERS: &[&str] =
    &["api", "store", "domain", "entity", "migration", "worker", "tools", "tests", "frontend-schema", "docs", ".ci"];

/// Files at the top of the repository that the documents name bare.
const TOP_LEVEL_FILES: &[&str] = &["README.md", "Cargo.toml", "Cargo.lock", "clippy.toml", "rustfmt.toml"];

/// Endings that make a word a file name even without a known folder in front.
const EXTENSIONS: &[&str] = &["rs", "md", "sh", "toml", "graphql", "ts", "json", "py", "yml", "pem", "png"];

/// Created by running the service or building, never checked in.
const RUNTIME_OUTPUT: &[&str] = &["data", "target"];

/// Not part of the source tree: never walked when matching short names.
const NOT_WALKED: &[&str] = &[".git", "target", "data", "node_modules"];

/// Characters that make a word something other than a literal path: placeholders,
/// globs, shell syntax, alternatives, host:port pairs, escapes.
const NOT_IN_A_PATH: &[char] = &['*', '?', '<', '>', '{', '}', '$', '…', '@', ':', '\\', '|', ',', '='];

/// How a mention is checked.
#[derive(Debug, PartialEq, Eq)]
enum Check {
    /// Relative to the repository root.
    Root(String),
    /// The end of some path in the tree (a short name).
    Suffix(String),
    /// A link target, relative to the folder of the document that holds it.
    Link(String),
}

#[test]
fn every_repository_path_the_docs_name_exists() {
    let root = repo_root();
    let tree = tree_paths(&root);
    let mut missing = BTreeSet::new();
    for doc in documents(&root) {
        let text = fs::read_to_string(root.join(&doc)).unwrap_or_else(|e| panic!("reading {doc}: {e}"));
        let doc_dir = Path::new(&doc).parent().unwrap_or(Path::new("")).to_path_buf();
        for check in mentions(&text) {
            if let Some(problem) = problem(&root, &doc_dir, &tree, &check) {
                missing.insert(format!("  {doc}: {problem}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "README.md and docs/*.md name {} path(s) that do not exist in the repository \
         (fix the mention or the file; a short name such as `http/ws.rs` must be the end of a path):\n{}",
        missing.len(),
        missing.into_iter().collect::<Vec<_>>().join("\n"),
    );
}

#[test]
fn mentions_are_taken_from_code_and_links_and_placeholders_urls_and_globs_are_skipped() {
    let text = "See `api/src/lib.rs` and [the history](benchmarks-history.md#top), not \
                `POST /graphql`, `<prefix>.tasks.status`, `docs/img/*.png`, `data/jwt-secret`, \
                `redis://host:6379`, [a site](https://example.com) or [a section](#quick-start).\n\
                Prose such as api/src/main.rs is not read; `http/ws.rs` is a short name.\n\
                ```sh\n\
                bash tests/bench/run-benchmarks.sh embedded|real > /tmp/out.json\n\
                ```\n\
                `../outside/DESIGN.md`\n";
    let expected = vec![
        Check::Root("api/src/lib.rs".into()),
        Check::Link("benchmarks-history.md".into()),
        Check::Suffix("http/ws.rs".into()),
        Check::Root("tests/bench/run-benchmarks.sh".into()),
        Check::Root("../outside/DESIGN.md".into()),
    ];
    assert_eq!(mentions(text), expected);
}

#[test]
fn a_path_that_leaves_the_repository_is_reported() {
    let check = Check::Link("../../shared/DESIGN.md".into());
    let problem = problem(&repo_root(), Path::new("docs"), &BTreeSet::new(), &check);
    assert_eq!(problem.as_deref(), Some("`../../shared/DESIGN.md` (outside the repository)"));
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `README.md` and every `docs/*.md`, as paths relative to the root.
fn documents(root: &Path) -> Vec<String> {
    let mut docs = vec!["README.md".to_owned()];
    let entries = fs::read_dir(root.join("docs")).unwrap_or_else(|e| panic!("reading docs/: {e}"));
    let mut more: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".md"))
        .map(|name| format!("docs/{name}"))
        .collect();
    more.sort();
    docs.extend(more);
    docs
}

/// The checks a document asks for, in order of appearance.
fn mentions(text: &str) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            checks.extend(line.split_whitespace().filter_map(classify));
            continue;
        }
        // Odd pieces between backticks are code spans; the others are prose, where only
        // link targets count.
        for (i, piece) in line.split('`').enumerate() {
            if i % 2 == 1 {
                checks.extend(piece.split_whitespace().filter_map(classify));
            } else {
                checks.extend(link_targets(piece).into_iter().map(Check::Link));
            }
        }
    }
    checks
}

/// The repository-relative targets of the Markdown links in `prose`, without fragments.
fn link_targets(prose: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut rest = prose;
    while let Some(start) = rest.find("](") {
        rest = &rest[start + 2..];
        let end = rest.find([')', ' ']).unwrap_or(rest.len());
        let target = rest[..end].split('#').next().unwrap_or_default();
        if !target.is_empty() && !target.contains(':') {
            targets.push(target.to_owned());
        }
        rest = &rest[end..];
    }
    targets
}

/// What a word of code asks to be checked, if it names a repository path at all.
fn classify(word: &str) -> Option<Check> {
    let word = word
        .trim_start_matches(['\'', '"', '(', '['])
        .trim_end_matches(['\'', '"', ')', ']', ',', ';', ':', '.', '!', '?']);
    if word.is_empty() || word.contains("://") || word.starts_with(['/', '~', '-', '#']) || word.contains(NOT_IN_A_PATH)
    {
        return None;
    }
    let first = word.split('/').next().unwrap_or_default();
    let nested = word.contains('/');
    if nested && RUNTIME_OUTPUT.contains(&first) {
        return None;
    }
    if (nested && (first == ".." || TOP_LEVEL_FOLDERS.contains(&first))) || TOP_LEVEL_FILES.contains(&word) {
        return Some(Check::Root(word.to_owned()));
    }
    let extension = Path::new(word).extension().and_then(|e| e.to_str()).unwrap_or_default();
    EXTENSIONS.contains(&extension).then(|| Check::Suffix(word.to_owned()))
}

/// Why `check` fails, or `None` when what it names exists.
fn problem(root: &Path, doc_dir: &Path, tree: &BTreeSet<String>, check: &Check) -> Option<String> {
    let (named, relative) = match check {
        Check::Root(path) => (path, PathBuf::from(path)),
        Check::Link(target) => (target, doc_dir.join(target)),
        Check::Suffix(name) => {
            let name = name.trim_end_matches('/');
            let suffix = format!("/{name}");
            let found = tree.iter().any(|path| path == name || path.ends_with(&suffix));
            return (!found).then(|| format!("`{name}` (no path in the tree ends with it)"));
        }
    };
    match normalized(&relative) {
        None => Some(format!("`{named}` (outside the repository)")),
        Some(path) if root.join(&path).exists() => None,
        Some(path) if matches!(check, Check::Link(_)) => Some(format!("`{named}` (a link to `{}`)", path.display())),
        Some(_) => Some(format!("`{named}`")),
    }
}

/// `path` with `.` and `..` resolved lexically; `None` when it climbs above its start.
fn normalized(path: &Path) -> Option<PathBuf> {
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => parts.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.iter().collect())
}

/// Every file and folder of the tree, relative to the root, with `/` separators.
fn tree_paths(root: &Path) -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = fs::read_dir(root.join(&dir)) else { continue };
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if NOT_WALKED.contains(&name.as_str()) {
                continue;
            }
            let path = dir.join(&name);
            paths.insert(path.to_string_lossy().replace('\\', "/"));
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(path);
            }
        }
    }
    paths
}
