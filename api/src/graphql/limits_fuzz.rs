//! A property test of the query-limit checker over generated documents: whatever the
//! document (fragment cycles, unknown fragments, bombs, wide and deep sets, unselected
//! operations, unused fragments, stray variables), [`check`] neither panics nor takes
//! more than [`CASE_LIMIT`]. The checker promises time linear in the document; a case
//! over the limit is a document on which it does not keep that promise.
//!
//! Documents are generated from a small vocabulary (real schema fields, a handful of
//! fragment names, some unknown) so that spreads usually hit fragments and fields
//! usually exist, and each definition may repeat its selections up to a few thousand
//! times, which is how the expensive documents are built.

use std::{
    sync::LazyLock,
    time::{Duration, Instant},
};

use async_graphql::{Variables, parser::parse_query};
use proptest::prelude::*;

use super::{SchemaShape, check};

/// The longest one check may take: far above what a linear walk of these documents
/// costs, far below what a quadratic or exponential one would.
const CASE_LIMIT: Duration = Duration::from_millis(50);

/// Runs of a slow case before it counts as a failure: a case fails only if every run is
/// over the limit, so a descheduled thread on a busy machine does not fail it.
const RUNS: usize = 3;

/// Generated cases per run of the test (each parses a document of up to some 500 KiB).
const CASES: u32 = 96;

static SHAPE: LazyLock<SchemaShape> =
    LazyLock::new(|| SchemaShape::from_sdl(&crate::graphql::sdl()).expect("the real SDL has a shape"));

/// Fragment names: the first five are defined by the generated document (some of them),
/// the last never is.
const FRAGMENTS: [&str; 6] = ["F0", "F1", "F2", "F3", "F4", "Missing"];

/// Field names of the schema at several levels, introspection included, and one unknown.
const FIELDS: [&str; 16] = [
    "me", "subject", "roles", "task", "tasks", "events", "edges", "node", "nodes", "id", "workers", "__schema",
    "__type", "types", "fields", "nope",
];

/// One selection, before rendering.
#[derive(Debug, Clone)]
enum Selection {
    Field { alias: bool, name: usize, page: Option<i64>, directive: bool, children: Vec<Selection> },
    Inline(Vec<Selection>),
    Spread(usize),
}

fn selection() -> impl Strategy<Value = Selection> {
    let leaf = prop_oneof![
        (any::<bool>(), 0..FIELDS.len(), proptest::option::of(-5i64..2_000_000), any::<bool>()).prop_map(
            |(alias, name, page, directive)| Selection::Field { alias, name, page, directive, children: Vec::new() }
        ),
        (0..FRAGMENTS.len()).prop_map(Selection::Spread),
    ];
    leaf.prop_recursive(6, 48, 6, |inner| {
        prop_oneof![
            (
                any::<bool>(),
                0..FIELDS.len(),
                proptest::option::of(-5i64..2_000_000),
                any::<bool>(),
                proptest::collection::vec(inner.clone(), 1..6),
            )
                .prop_map(|(alias, name, page, directive, children)| Selection::Field {
                    alias,
                    name,
                    page,
                    directive,
                    children
                }),
            proptest::collection::vec(inner, 1..6).prop_map(Selection::Inline),
        ]
    })
}

/// A definition's body: some selections, repeated (0: once; else up to thousands).
fn body() -> impl Strategy<Value = (Vec<Selection>, usize)> {
    (proptest::collection::vec(selection(), 1..5), prop_oneof![3 => Just(1usize), 1 => 1usize..3_000])
}

/// What a spread of fragment number `index` becomes in the definition being rendered.
type Spreads<'a> = &'a dyn Fn(usize) -> String;

fn render(selections: &[Selection], spreads: Spreads<'_>, out: &mut String) {
    for selection in selections {
        match selection {
            Selection::Field { alias, name, page, directive, children } => {
                if *alias {
                    out.push_str("x: ");
                }
                out.push_str(FIELDS[*name]);
                match page {
                    Some(page) if page % 3 == 0 => out.push_str("(first: $n)"),
                    Some(page) => out.push_str(&format!("(first: {page})")),
                    None => {}
                }
                if *directive {
                    out.push_str(" @include(if: true)");
                }
                if !children.is_empty() {
                    out.push_str(" { ");
                    render(children, spreads, out);
                    out.push('}');
                }
                out.push(' ');
            }
            Selection::Inline(children) => {
                out.push_str("... { ");
                render(children, spreads, out);
                out.push_str("} ");
            }
            Selection::Spread(fragment) => {
                out.push_str(&spreads(*fragment));
                out.push(' ');
            }
        }
    }
}

/// Longest rendered body: the repeat is cut down to fit, so documents stay under some
/// 500 KiB and each case parses quickly.
const MAX_BODY_BYTES: usize = 64 * 1024;

fn render_body((selections, repeat): &(Vec<Selection>, usize), spreads: Spreads<'_>) -> String {
    let mut once = String::new();
    render(selections, spreads, &mut once);
    once.repeat((*repeat).min(MAX_BODY_BYTES / once.len().max(1)).max(1))
}

/// A whole document: one to three operations, and some of the five fragments (on
/// `Query`, `Task` or `__Type`). Mostly well-formed: each fragment is defined and spreads
/// only fragments defined after it, so documents get past the cycle and unknown-fragment
/// checks to the expensive part; one document in eight spreads any name anywhere
/// (cycles, unknown and undefined fragments).
fn document() -> impl Strategy<Value = String> {
    let operations = proptest::collection::vec((0..3usize, body()), 1..4);
    let fragments = proptest::collection::vec((prop::bool::weighted(0.9), 0..3usize, body()), FRAGMENTS.len() - 1);
    (operations, fragments, prop::bool::weighted(0.125)).prop_map(|(operations, fragments, anything)| {
        let defined = |i: usize| anything || fragments.get(i).is_some_and(|(defined, _, _)| *defined);
        let mut document = String::new();
        for (i, (kind, body)) in operations.iter().enumerate() {
            let kind = ["query", "mutation", "subscription"][*kind];
            let spreads = |f: usize| match f {
                f if anything || (f < fragments.len() && defined(f)) => format!("...{}", FRAGMENTS[f]),
                _ => "__typename".to_owned(),
            };
            document.push_str(&format!("{kind} Op{i}($n: Int) {{ {} }}\n", render_body(body, &spreads)));
        }
        for (i, (_, on, body)) in fragments.iter().enumerate() {
            if !defined(i) {
                continue;
            }
            let spreads = |f: usize| match f {
                f if anything => format!("...{}", FRAGMENTS[f]),
                f if f > i && f < fragments.len() && defined(f) => format!("...{}", FRAGMENTS[f]),
                _ => "__typename".to_owned(),
            };
            let on = ["Query", "Task", "__Type"][*on];
            document.push_str(&format!("fragment F{i} on {on} {{ {} }}\n", render_body(body, &spreads)));
        }
        document
    })
}

/// A fragment chain: `B0` spreads `B1` `fan` times, `B1` spreads `B2` `fan` times, …, and
/// the last holds a generated body; spread from a generated operation (selected or not),
/// on `Query` or under `__schema { types { … } }`, and perhaps never at all. Expanded, it
/// is `fan^length` copies of the last body: only memoised measuring keeps it cheap.
fn bomb() -> impl Strategy<Value = String> {
    (1..32usize, 1..4usize, body(), any::<bool>(), 0..3usize).prop_map(|(length, fan, leaf, introspection, used_by)| {
        let on = if introspection { "__Type" } else { "Query" };
        let spread = |i: usize| format!("...B{i} ").repeat(fan);
        let mut document = match (used_by, introspection) {
            (0, true) => "query Op0 { __schema { types { ...B0 } } }\n".to_owned(),
            (0, false) => "query Op0 { ...B0 }\n".to_owned(),
            (1, true) => "query Op0 { me { subject } } query Op1 { __schema { types { ...B0 } } }\n".to_owned(),
            (1, false) => "query Op0 { me { subject } } query Op1 { ...B0 }\n".to_owned(),
            _ => "query Op0 { me { subject } }\n".to_owned(),
        };
        for i in 0..length {
            document.push_str(&format!("fragment B{i} on {on} {{ {} }}\n", spread(i + 1)));
        }
        let spreads = |_: usize| "__typename".to_owned();
        document.push_str(&format!("fragment B{length} on {on} {{ {} }}\n", render_body(&leaf, &spreads)));
        document
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_checker_is_fast_and_never_panics_whatever_the_document(
        text in prop_oneof![document(), bomb()],
        selected in proptest::option::of(0..4usize),
        n in -5i64..5_000_000,
    ) {
        // Documents the parser refuses never reach the checker.
        let Ok(parsed) = parse_query(&text) else { return Ok(()) };
        let name = selected.map(|i| format!("Op{i}"));
        let variables = Variables::from_json(serde_json::json!({ "n": n }));
        let limits = crate::config::Config::defaults().query_limits;
        let mut fastest = Duration::MAX;
        for _ in 0..RUNS {
            let started = Instant::now();
            let _ = check(&SHAPE, &parsed, name.as_deref(), &variables, &limits);
            fastest = fastest.min(started.elapsed());
            if fastest <= CASE_LIMIT {
                break;
            }
        }
        prop_assert!(
            fastest <= CASE_LIMIT,
            "checking took {fastest:?} (> {CASE_LIMIT:?}) for a document of {} bytes:\n{text}",
            text.len()
        );
    }
}
