//! The checked-in contract matches the server: the SDL, every checked-in operation (run
//! against a live app, subscriptions included, each with a role allowed to run it), and
//! the error codes of the TypeScript package.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use async_graphql::parser::{
    parse_query,
    types::{OperationType, Selection, SelectionSet},
};
use serde_json::{Value, json};
use taskwire_frontend_schema::{OPERATIONS, SCHEMA, TS_CODES};
use taskwire_tests::{
    TestApp,
    ws::{Received, TRANSPORT_WS, WsClient},
};

/// The whole run of every operation must end within this; past it the test fails naming
/// the operation it was running, instead of hanging.
const DEADLINE: Duration = Duration::from_secs(180);

#[test]
fn the_checked_in_sdl_matches_the_server() {
    let server = taskwire_api::graphql::sdl();
    assert!(
        SCHEMA == server,
        "frontend-schema/schema.graphql is stale; regenerate it with\n    cargo run -q -- schema > frontend-schema/schema.graphql\nand review the diff (frontends depend on it), then `npm run codegen` in frontend-schema/"
    );
}

/// Directives the GraphQL specification defines: their arguments are described there.
const SPEC_DIRECTIVES: [&str; 4] = ["include", "skip", "specifiedBy", "deprecated"];

#[test]
fn every_type_field_and_argument_of_the_sdl_has_a_description() {
    use async_graphql::parser::{
        parse_schema,
        types::{TypeKind, TypeSystemDefinition},
    };
    let sdl = taskwire_api::graphql::sdl();
    let document = parse_schema(&sdl).expect("the SDL parses");
    let described =
        |d: &Option<async_graphql::Positioned<String>>| d.as_ref().is_some_and(|d| !d.node.trim().is_empty());
    let mut missing = Vec::new();
    let mut counted = 0usize;
    let mut check = |ok: bool, what: String| {
        counted += 1;
        if !ok {
            missing.push(what);
        }
    };
    for definition in &document.definitions {
        match definition {
            TypeSystemDefinition::Type(ty) => {
                let ty = &ty.node;
                let name = ty.name.node.as_str();
                check(described(&ty.description), format!("type {name}"));
                let fields = match &ty.kind {
                    TypeKind::Object(object) => object.fields.as_slice(),
                    TypeKind::Interface(interface) => interface.fields.as_slice(),
                    TypeKind::InputObject(input) => {
                        for field in &input.fields {
                            check(
                                described(&field.node.description),
                                format!("input field {name}.{}", field.node.name.node),
                            );
                        }
                        &[]
                    }
                    TypeKind::Enum(en) => {
                        for value in &en.values {
                            check(
                                described(&value.node.description),
                                format!("enum value {name}.{}", value.node.value.node),
                            );
                        }
                        &[]
                    }
                    TypeKind::Scalar => {
                        // Custom scalars say what they are by a specification.
                        let specified = ty.directives.iter().any(|d| d.node.name.node == "specifiedBy");
                        check(specified, format!("@specifiedBy on scalar {name}"));
                        &[]
                    }
                    TypeKind::Union(_) => &[],
                };
                for field in fields {
                    let field = &field.node;
                    check(described(&field.description), format!("field {name}.{}", field.name.node));
                    for argument in &field.arguments {
                        check(
                            described(&argument.node.description),
                            format!("argument {name}.{}({})", field.name.node, argument.node.name.node),
                        );
                    }
                }
            }
            TypeSystemDefinition::Directive(directive) => {
                let directive = &directive.node;
                let name = directive.name.node.as_str();
                check(described(&directive.description), format!("directive @{name}"));
                if !SPEC_DIRECTIVES.contains(&name) {
                    for argument in &directive.arguments {
                        check(
                            described(&argument.node.description),
                            format!("argument @{name}({})", argument.node.name.node),
                        );
                    }
                }
            }
            TypeSystemDefinition::Schema(_) => {}
        }
    }
    assert!(counted > 200, "the walk saw the schema ({counted} items)");
    assert!(missing.is_empty(), "{} without a description:\n  {}", missing.len(), missing.join("\n  "));
}

#[test]
fn every_operation_file_is_listed_in_operations() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("operations");
    let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
        .expect("operations/ is readable")
        .map(|entry| entry.expect("directory entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".graphql"))
        .collect();
    let listed: BTreeSet<String> = OPERATIONS.iter().map(|(file, _)| (*file).to_owned()).collect();
    assert_eq!(on_disk, listed, "OPERATIONS in src/lib.rs lists every file of operations/");
}

#[test]
fn the_typescript_error_codes_are_the_servers() {
    let block = TS_CODES
        .split_once("export const ErrorCode = {")
        .and_then(|(_, rest)| rest.split_once("} as const;"))
        .map(|(block, _)| block)
        .expect("src/codes.ts defines `export const ErrorCode = { … } as const;`");
    let in_typescript: BTreeSet<&str> = block
        .lines()
        .map(str::trim)
        .filter(|line| !line.starts_with("/*") && !line.starts_with('*'))
        .filter_map(|line| line.split_once(": \"").and_then(|(_, value)| value.strip_suffix("\",")))
        .collect();
    let on_the_server: BTreeSet<&str> = taskwire_domain::ErrorCode::ALL.iter().map(|code| code.as_str()).collect();
    assert_eq!(in_typescript, on_the_server, "src/codes.ts ErrorCode lists exactly the codes of ErrorCode::ALL");
}

/// One operation of a file, as a client sends it: its own text and the fragments it
/// spreads, directly or through other fragments, from any file.
#[derive(Debug)]
struct Operation {
    file: &'static str,
    name: String,
    kind: OperationType,
    document: String,
}

/// A definition's text and the fragments it spreads.
#[derive(Debug)]
struct Definition {
    text: String,
    spreads: BTreeSet<String>,
}

fn spreads_of(set: &SelectionSet, into: &mut BTreeSet<String>) {
    for item in &set.items {
        match &item.node {
            Selection::Field(field) => spreads_of(&field.node.selection_set.node, into),
            Selection::FragmentSpread(spread) => {
                into.insert(spread.node.fragment_name.node.to_string());
            }
            Selection::InlineFragment(inline) => spreads_of(&inline.node.selection_set.node, into),
        }
    }
}

/// The byte offset of a 1-based line and column (in characters).
fn offset(source: &str, line: usize, column: usize) -> usize {
    let line_start: usize = source.split_inclusive('\n').take(line - 1).map(str::len).sum();
    line_start + source[line_start..].chars().take(column - 1).map(char::len_utf8).sum::<usize>()
}

/// What a definition of an operations file is.
enum Named {
    Operation(String, OperationType),
    Fragment(String),
}

/// A definition found in a file: where it starts, what it is, what it spreads.
struct Found {
    start: usize,
    named: Named,
    spreads: BTreeSet<String>,
}

/// Every operation of every file, each with the fragments it needs. Operation and fragment
/// names are unique across files, as codegen requires.
fn operations() -> Vec<Operation> {
    let mut fragments: BTreeMap<String, Definition> = BTreeMap::new();
    let mut operations: Vec<(&'static str, String, OperationType, Definition)> = Vec::new();
    for (file, source) in OPERATIONS {
        let document = parse_query(source).unwrap_or_else(|e| panic!("operations/{file} parses: {e}"));
        let mut found = Vec::new();
        for (name, operation) in document.operations.iter() {
            let name = name.unwrap_or_else(|| panic!("operations/{file}: every operation is named")).to_string();
            let mut spreads = BTreeSet::new();
            spreads_of(&operation.node.selection_set.node, &mut spreads);
            let start = offset(source, operation.pos.line, operation.pos.column);
            found.push(Found { start, named: Named::Operation(name, operation.node.ty), spreads });
        }
        for (name, fragment) in &document.fragments {
            let mut spreads = BTreeSet::new();
            spreads_of(&fragment.node.selection_set.node, &mut spreads);
            let start = offset(source, fragment.pos.line, fragment.pos.column);
            found.push(Found { start, named: Named::Fragment(name.to_string()), spreads });
        }
        // Each definition's text runs from its start to the next one's.
        found.sort_by_key(|definition| definition.start);
        let ends: Vec<usize> = found.iter().skip(1).map(|next| next.start).chain([source.len()]).collect();
        for (Found { start, named, spreads }, end) in found.into_iter().zip(ends) {
            let definition = Definition { text: source[start..end].trim_end().to_owned(), spreads };
            match named {
                Named::Fragment(fragment) => {
                    let previous = fragments.insert(fragment.clone(), definition);
                    assert!(previous.is_none(), "fragment {fragment} is defined once across operations/");
                }
                Named::Operation(name, kind) => operations.push((file, name, kind, definition)),
            }
        }
    }
    for (file, _) in OPERATIONS {
        assert!(operations.iter().any(|(from, ..)| from == file), "operations/{file} holds operations");
    }
    let mut names = BTreeSet::new();
    operations
        .into_iter()
        .map(|(file, name, kind, definition)| {
            assert!(names.insert(name.clone()), "operation {name} is defined once across operations/");
            let mut needed = BTreeSet::new();
            let mut pending: Vec<String> = definition.spreads.iter().cloned().collect();
            while let Some(fragment) = pending.pop() {
                if needed.insert(fragment.clone()) {
                    let used = fragments
                        .get(&fragment)
                        .unwrap_or_else(|| panic!("operations/{file} {name}: fragment {fragment} is defined"));
                    pending.extend(used.spreads.iter().cloned());
                }
            }
            let mut document = definition.text;
            for fragment in &needed {
                document.push_str("\n\n");
                document.push_str(&fragments[fragment].text);
            }
            Operation { file, name, kind, document }
        })
        .collect()
}

/// How an operation is run: with whose token and which variables.
struct Case {
    token: String,
    variables: Value,
}

const CLIENT: &str = "contract-client";
/// Serves queue `work`; its `assignments` stream hands the test its leases.
const WORKER: &str = "contract-worker";
/// Serves queue `assign`: the `Assignments` operation subscribes as this worker.
const ASSIGNEE: &str = "contract-assignee";
/// Registered to be drained.
const DRAINED: &str = "contract-drained";

const REGISTER: &str = "mutation($input: RegisterWorkerInput!) { registerWorker(input: $input) { id } }";
const LEASES: &str = "subscription { assignments { leaseToken task { id } } }";
const ACCEPT: &str = "mutation($id: ID!, $lease: String!) { acceptTask(taskId: $id, leaseToken: $lease) { id } }";
const CANCEL: &str = "mutation($id: ID!) { cancelTask(id: $id) { id } }";

/// The running app, tokens for every role, and a worker whose offers the test takes.
struct Contract {
    app: TestApp,
    client: String,
    operator: String,
    admin: String,
    worker: String,
    leases: WsClient,
}

impl Contract {
    async fn start() -> Contract {
        let app = TestApp::spawn().await;
        let worker = app.token(WORKER, &["worker"]);
        let input = json!({ "input": { "name": WORKER, "queues": ["work"], "capacity": 50 } });
        app.gql(Some(&worker), REGISTER, input).await.data();
        let mut leases = app.ws_connected(TRANSPORT_WS, &worker).await;
        leases.subscribe("leases", LEASES, json!({})).await;
        Contract {
            client: app.token(CLIENT, &["client"]),
            operator: app.token("contract-operator", &["operator"]),
            admin: app.token("contract-admin", &["admin"]),
            worker,
            leases,
            app,
        }
    }

    async fn task(&self, queue: &str) -> String {
        self.app.create_task(&self.client, json!({ "queue": queue, "kind": "contract", "payload": { "n": 1 } })).await
    }

    /// A fresh task offered to [`WORKER`]: `(task id, lease token)`. Offers of other tasks
    /// (released or requeued by earlier operations) are passed over.
    async fn offer(&mut self) -> (String, String) {
        let id = self.task("work").await;
        loop {
            let data = self.leases.next_data("leases").await;
            if data["assignments"]["task"]["id"] == id.as_str() {
                let lease = data["assignments"]["leaseToken"].as_str().expect("lease token").to_owned();
                return (id, lease);
            }
        }
    }

    /// A fresh task running on [`WORKER`].
    async fn running(&mut self) -> (String, String) {
        let (id, lease) = self.offer().await;
        self.app.gql(Some(&self.worker), ACCEPT, json!({ "id": id, "lease": lease })).await.data();
        (id, lease)
    }

    async fn register(&self, worker: &str, queue: &str) -> String {
        let token = self.app.token(worker, &["worker"]);
        let input = json!({ "input": { "name": worker, "queues": [queue], "capacity": 1 } });
        self.app.gql(Some(&token), REGISTER, input).await.data();
        token
    }

    /// The token and sample variables of every operation in operations/. `None` for an
    /// operation this test does not know: add its case here.
    async fn case(&mut self, name: &str) -> Option<Case> {
        let client = self.client.clone();
        let operator = self.operator.clone();
        let admin = self.admin.clone();
        let worker = self.worker.clone();
        let case = |token: &str, variables: Value| Some(Case { token: token.to_owned(), variables });
        match name {
            // tasks.graphql: clients.
            "Me" => case(&client, json!({})),
            "GetTask" => case(&client, json!({ "id": self.task("q").await, "lastEvents": 5 })),
            "ListTasks" => case(&client, json!({ "filter": { "status": ["QUEUED"] }, "first": 5 })),
            "GetNodes" => {
                let id = self.task("q").await;
                let read =
                    self.app.gql(Some(&client), "query($id: ID!) { task(id: $id) { nodeId } }", json!({ "id": id }));
                let node = read.await.data()["task"]["nodeId"].clone();
                case(&client, json!({ "ids": [node, node] }))
            }
            "CreateTask" => case(&client, json!({ "input": { "queue": "q", "kind": "k", "payload": { "n": 1 } } })),
            "CreateTasks" => case(&client, json!({ "inputs": [{ "queue": "q", "kind": "k" }] })),
            "CancelTask" => case(&client, json!({ "id": self.task("q").await, "reason": "contract test" })),
            "TaskUpdated" => case(&client, json!({ "id": self.task("q").await, "afterSeq": 0 })),
            "TaskEvents" => case(&client, json!({ "filter": { "queue": "events" } })),
            // workers.graphql: the worker protocol.
            "RegisterWorker" => {
                case(&worker, json!({ "input": { "name": WORKER, "queues": ["work"], "capacity": 50 } }))
            }
            "Assignments" => {
                // An outstanding offer is delivered first, whenever the dispatcher makes it.
                let token = self.register(ASSIGNEE, "assign").await;
                self.task("assign").await;
                case(&token, json!({}))
            }
            "AcceptTask" => {
                let (id, lease) = self.offer().await;
                case(&worker, json!({ "taskId": id, "leaseToken": lease }))
            }
            "Heartbeat" | "RenewLeases" => {
                let (id, _) = self.running().await;
                case(&worker, json!({ "tasks": [id] }))
            }
            "CompleteTask" => {
                let (id, lease) = self.running().await;
                case(&worker, json!({ "taskId": id, "leaseToken": lease, "result": { "ok": true } }))
            }
            "FailTask" => {
                let (id, lease) = self.running().await;
                case(&worker, json!({ "taskId": id, "leaseToken": lease, "error": "contract", "retryable": false }))
            }
            "ReleaseTask" => {
                let (id, lease) = self.offer().await;
                case(&worker, json!({ "taskId": id, "leaseToken": lease }))
            }
            // operators.graphql: operators and admins.
            "GetWorker" => case(&operator, json!({ "id": WORKER })),
            "ListWorkers" => case(&operator, json!({ "queue": "work", "status": "ONLINE" })),
            "GetQueue" => case(&operator, json!({ "name": "work" })),
            "ListQueues" => case(&operator, json!({})),
            "QueueStats" => case(&operator, json!({ "name": "work" })),
            "RetryTask" => {
                let id = self.task("q").await;
                self.app.gql(Some(&client), CANCEL, json!({ "id": id })).await.data();
                case(&operator, json!({ "id": id }))
            }
            "RequeueDeadTasks" => case(&admin, json!({ "queue": "work" })),
            "DrainWorker" => {
                self.register(DRAINED, "idle").await;
                case(&admin, json!({ "id": DRAINED }))
            }
            "PauseQueue" | "ResumeQueue" => case(&admin, json!({ "name": "paused" })),
            "ConfigureQueue" => case(
                &admin,
                json!({ "input": { "name": "configured", "maxConcurrency": 4, "maxAttempts": 3, "leaseSeconds": 30 } }),
            ),
            _ => None,
        }
    }

    /// Runs a query or mutation over HTTP; its data.
    async fn over_http(&self, operation: &Operation, case: &Case) -> Value {
        let body = json!({ "query": operation.document, "operationName": operation.name, "variables": case.variables });
        let response = self.app.post_json(Some(&case.token), &body).await;
        let at = format!("operations/{} {}", operation.file, operation.name);
        assert_eq!(response.status, 200, "{at}: {}", response.body);
        assert!(response.errors().is_empty(), "{at}: {}", response.body);
        response.body["data"].clone()
    }

    /// Runs a subscription over graphql-transport-ws; the data of its first event.
    async fn over_ws(&self, operation: &Operation, case: &Case) -> Value {
        let at = format!("operations/{} {}", operation.file, operation.name);
        let mut ws = self.app.ws_connected(TRANSPORT_WS, &case.token).await;
        let payload =
            json!({ "query": operation.document, "operationName": operation.name, "variables": case.variables });
        ws.send(json!({ "id": "s", "type": "subscribe", "payload": payload })).await;
        let message = if operation.name == "TaskEvents" {
            // Only new events arrive, and the subscription starts listening a moment after
            // `subscribe` is read: create tasks until one is heard.
            loop {
                self.task("events").await;
                if let Ok(received) = tokio::time::timeout(Duration::from_millis(500), ws.recv()).await {
                    break received;
                }
            }
        } else {
            ws.recv().await
        };
        let message = match message {
            Received::Json(message) => message,
            Received::Closed(code, reason) => panic!("{at}: the server closed the connection ({code} {reason})"),
        };
        assert_eq!(message["type"], "next", "{at}: {message}");
        assert_eq!(message["id"], "s", "{at}: {message}");
        assert!(message["payload"].get("errors").is_none(), "{at}: {message}");
        ws.close().await;
        message["payload"]["data"].clone()
    }
}

#[tokio::test]
async fn every_checked_in_operation_runs_without_errors() {
    let operations = operations();
    let running = Arc::new(Mutex::new(String::from("start-up")));
    let current = running.clone();
    let run = async move {
        let mut contract = Contract::start().await;
        for operation in &operations {
            let at = format!("operations/{} {}", operation.file, operation.name);
            *current.lock().expect("not poisoned") = at.clone();
            // Shown with the failure when a step panics (a WebSocket wait, say).
            eprintln!("running {at}");
            let case = contract.case(&operation.name).await.unwrap_or_else(|| {
                panic!("{at} has no case in frontend-schema/tests/contract.rs (Contract::case): add its token and sample variables")
            });
            let data = match operation.kind {
                OperationType::Query | OperationType::Mutation => contract.over_http(operation, &case).await,
                OperationType::Subscription => contract.over_ws(operation, &case).await,
            };
            // Sample variables that name nothing would make `task(id:)` and the like
            // answer null without an error: every root field must answer something.
            let fields = data.as_object().unwrap_or_else(|| panic!("{at}: data is an object: {data}"));
            assert!(!fields.is_empty(), "{at}: data names a root field");
            for (field, value) in fields {
                assert!(!value.is_null(), "{at}: {field} answered null with variables {}", case.variables);
            }
        }
    };
    if tokio::time::timeout(DEADLINE, run).await.is_err() {
        panic!(
            "the operations did not all run within {DEADLINE:?}; stuck at {}",
            running.lock().expect("not poisoned")
        );
    }
}
