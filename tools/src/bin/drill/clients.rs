//! The drill's clients: readers and creators that follow the instances around, and the
//! GraphQL calls that prepare the queue and read its tasks back.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use rand::Rng;
use serde_json::{Value, json};
use taskwire_tools::{
    load::{add_errors, error_kind, lock, mint, post},
    watch::TERMINAL,
};
use tokio::task::JoinHandle;

use crate::{
    args::Options,
    timeline::{Op, Timeline},
    watchers::WatchFeed,
};

/// Pause of a creator or reader after a transport failure (the server is down).
const DOWN_PAUSE: Duration = Duration::from_millis(100);
/// How often the listing is read while settling.
const SETTLE_POLL: Duration = Duration::from_secs(2);

const CREATE: &str = "mutation Create($i: CreateTaskInput!) { createTask(input: $i) { task { id } } }";
const READ: &str = "query Read($id: ID!) { task(id: $id) { id status } }";
const LIST: &str = "query List($queue: String!, $after: String) { tasks(filter: { queue: $queue }, first: 100, \
                    after: $after) { pageInfo { hasNextPage endCursor } nodes { id status } } }";
const CONFIGURE: &str = "mutation Configure($i: ConfigureQueueInput!) { configureQueue(input: $i) { name } }";
const SEED: &str = "mutation Seed($i: [CreateTaskInput!]!) { createTasks(inputs: $i) { task { id } } }";

/// Successes, failures by kind and latencies of one kind of client operation.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) ok: u64,
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) micros: Vec<i64>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        add_errors(&mut self.errors, other.errors);
        self.micros.extend(other.micros);
    }

    pub(crate) fn failed(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// A client's place in the list of instances: it stays on one until that stops answering
/// (a transport error), then moves on to the next, as behind a load balancer.
#[derive(Clone)]
pub(crate) struct Rotation {
    graphql: Arc<Vec<String>>,
    at: usize,
}

impl Rotation {
    pub(crate) fn url(&self) -> &str {
        &self.graphql[self.at % self.graphql.len()]
    }

    /// Moves on when `error` says the instance did not answer (`transport: …`, or
    /// `listing: transport`).
    pub(crate) fn after(&mut self, error: &str) {
        if error.split(':').any(|part| part.trim() == "transport") {
            self.at += 1;
        }
    }
}

/// What every client of the drill shares: the HTTP client, the instances and the
/// operator's token.
pub(crate) struct Clients {
    pub(crate) http: reqwest::Client,
    graphql: Arc<Vec<String>>,
    /// Operator, admin and client: configures the queue, seeds, reads, lists and watches.
    pub(crate) operator: String,
    /// How long the drill's tokens last: well past its end.
    pub(crate) lifetime: Duration,
}

impl Clients {
    pub(crate) fn new(o: &Options) -> Result<Clients, String> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(o.connections + o.readers)
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("http client: {e}"))?;
        let lifetime = o.duration + o.settle + Duration::from_secs(3600);
        let operator = mint(&o.secret, &format!("{}-operator", o.queue), &["operator", "admin", "client"], lifetime)?;
        let graphql = Arc::new(o.urls.iter().map(|url| format!("{url}/graphql")).collect());
        Ok(Clients { http, graphql, operator, lifetime })
    }

    /// A client's place in the instances, starting at the `at`-th.
    pub(crate) fn rotation(&self, at: usize) -> Rotation {
        Rotation { graphql: self.graphql.clone(), at }
    }

    /// Sets the queue's lease (`--lease-seconds`) and seeds the readers' working set in a
    /// queue nobody serves (`<queue>-reads`); the working set's ids.
    pub(crate) async fn prepare(&self, o: &Options) -> Result<Vec<String>, String> {
        if let Some(lease) = o.lease_seconds {
            let input = json!({ "name": o.queue, "leaseSeconds": lease });
            post(
                &self.http,
                &self.graphql[0],
                &self.operator,
                &json!({ "query": CONFIGURE, "variables": { "i": input } }),
            )
            .await
            .map_err(|e| format!("configureQueue: {e}"))?;
        }
        if o.readers == 0 {
            return Ok(Vec::new());
        }
        seed(&self.http, &self.graphql[0], &self.operator, &format!("{}-reads", o.queue), o.working_set).await
    }
}

/// Reads the queue's listing until every task of `wanted` is terminal or `o.settle` has
/// passed, moving to the next instance when one does not answer: the statuses last read
/// (empty when no listing could be read in time), and the listing's failures by reason.
pub(crate) async fn settle(
    o: &Options,
    clients: &Clients,
    wanted: &HashSet<&str>,
) -> (HashMap<String, String>, BTreeMap<String, u64>) {
    let deadline = Instant::now() + o.settle;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut instance = clients.rotation(0);
    let statuses = loop {
        match list(&clients.http, instance.url(), &clients.operator, &o.queue).await {
            Ok(statuses) => {
                let open = wanted
                    .iter()
                    .filter(|id| statuses.get(**id).is_none_or(|s| !TERMINAL.contains(&s.as_str())))
                    .count();
                if open == 0 || Instant::now() >= deadline {
                    break statuses;
                }
            }
            Err(e) => {
                instance.after(&e);
                *errors.entry(e).or_default() += 1;
                if Instant::now() >= deadline {
                    break HashMap::new();
                }
            }
        }
        tokio::time::sleep(SETTLE_POLL).await;
    };
    (statuses, errors)
}

/// The creators' and readers' tallies, and the tasks whose creation was acknowledged.
#[derive(Default)]
pub(crate) struct Load {
    pub(crate) creates: Tally,
    pub(crate) reads: Tally,
    pub(crate) acked: Vec<String>,
}

/// Runs the load phase until `deadline`: `o.readers` readers, closed loop over the
/// working set, and `o.connections` creators, open loop (the i-th create due at i / rate)
/// handing each acknowledged task to the watchers.
pub(crate) async fn run_load(
    o: &Options,
    clients: &Clients,
    working_set: Vec<String>,
    feed: &Arc<WatchFeed>,
    timeline: &Arc<Timeline>,
) -> Load {
    let deadline = timeline.start + o.duration;
    let working_set = Arc::new(working_set);
    let readers: Vec<_> = (0..o.readers)
        .map(|i| {
            let reader =
                Reader { http: clients.http.clone(), instance: clients.rotation(i), timeline: timeline.clone() };
            tokio::spawn(reader.run(clients.operator.clone(), working_set.clone(), deadline))
        })
        .collect();
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let slots = Arc::new(AtomicU64::new(0));
    let creators: Vec<JoinHandle<Tally>> = (0..o.connections)
        .map(|j| {
            let creator = Creator {
                http: clients.http.clone(),
                instance: clients.rotation(j),
                timeline: timeline.clone(),
                feed: feed.clone(),
                acked: acked.clone(),
                slots: slots.clone(),
                queue: o.queue.clone(),
                rate: o.rate,
            };
            let token = mint(&o.secret, &format!("{}-creator-{j}", o.queue), &["client"], clients.lifetime);
            tokio::spawn(async move {
                match token {
                    Ok(token) => creator.run(token, deadline).await,
                    Err(_) => Tally::default(),
                }
            })
        })
        .collect();
    let mut load = Load::default();
    for creator in creators {
        load.creates.merge(creator.await.unwrap_or_default());
    }
    for reader in readers {
        load.reads.merge(reader.await.unwrap_or_default());
    }
    load.acked = std::mem::take(&mut *lock(&acked));
    load
}

/// One reader: reads random tasks of the working set (90 % of the reads on its first
/// tenth).
struct Reader {
    http: reqwest::Client,
    instance: Rotation,
    timeline: Arc<Timeline>,
}

impl Reader {
    async fn run(mut self, token: String, ids: Arc<Vec<String>>, deadline: Instant) -> Tally {
        let mut tally = Tally::default();
        while Instant::now() < deadline {
            let id = {
                let mut rng = rand::rng();
                let hot = rng.random_bool(0.9);
                let n = if hot { (ids.len() / 10).max(1) } else { ids.len() };
                ids[rng.random_range(0..n)].clone()
            };
            let t0 = Instant::now();
            let read = json!({ "query": READ, "variables": { "id": id } });
            let answer = post(&self.http, self.instance.url(), &token, &read)
                .await
                .and_then(|v| if v["data"]["task"]["id"] == id.as_str() { Ok(()) } else { Err("WRONG_ANSWER".into()) });
            let took = t0.elapsed();
            self.timeline.record(Op::Read, answer.is_ok(), took);
            match answer {
                Ok(()) => {
                    tally.ok += 1;
                    tally.micros.push(took.as_micros() as i64);
                }
                Err(reason) => {
                    let transport = reason.starts_with("transport");
                    self.instance.after(&reason);
                    *tally.errors.entry(error_kind(&reason)).or_default() += 1;
                    if transport {
                        tokio::time::sleep(DOWN_PAUSE).await;
                    }
                }
            }
        }
        tally
    }
}

/// One creator: takes the next slot of the shared schedule, sends its create when due.
struct Creator {
    http: reqwest::Client,
    instance: Rotation,
    timeline: Arc<Timeline>,
    feed: Arc<WatchFeed>,
    acked: Arc<Mutex<Vec<String>>>,
    slots: Arc<AtomicU64>,
    queue: String,
    rate: f64,
}

impl Creator {
    async fn run(mut self, token: String, deadline: Instant) -> Tally {
        let mut tally = Tally::default();
        loop {
            let slot = self.slots.fetch_add(1, Ordering::Relaxed);
            let due = self.timeline.start + Duration::from_secs_f64(slot as f64 / self.rate);
            if due >= deadline {
                break;
            }
            tokio::time::sleep_until(due.into()).await;
            let input = json!({ "queue": self.queue, "kind": "drill", "payload": { "n": slot } });
            let t0 = Instant::now();
            let answer =
                post(&self.http, self.instance.url(), &token, &json!({ "query": CREATE, "variables": { "i": input } }))
                    .await
                    .and_then(|v| {
                        v["data"]["createTask"]["task"]["id"].as_str().map(str::to_owned).ok_or("NO_TASK_ID".into())
                    });
            let took = t0.elapsed();
            self.timeline.record(Op::Create, answer.is_ok(), took);
            match answer {
                Ok(id) => {
                    tally.ok += 1;
                    tally.micros.push(took.as_micros() as i64);
                    self.feed.acknowledged(&id);
                    lock(&self.acked).push(id);
                }
                Err(reason) => {
                    self.instance.after(&reason);
                    *tally.errors.entry(error_kind(&reason)).or_default() += 1;
                }
            }
        }
        tally
    }
}

/// Creates `count` tasks in `queue` (nobody serves it) for the readers; their ids.
async fn seed(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    queue: &str,
    count: usize,
) -> Result<Vec<String>, String> {
    let mut ids = Vec::with_capacity(count);
    while ids.len() < count {
        let inputs: Vec<Value> =
            (0..(count - ids.len()).min(500)).map(|_| json!({ "queue": queue, "kind": "read" })).collect();
        let value = post(http, url, token, &json!({ "query": SEED, "variables": { "i": inputs } }))
            .await
            .map_err(|e| format!("seeding the readers' tasks: {e}"))?;
        let created = value["data"]["createTasks"].as_array().cloned().unwrap_or_default();
        if created.is_empty() {
            return Err("seeding the readers' tasks: nothing created".into());
        }
        ids.extend(created.iter().filter_map(|c| c["task"]["id"].as_str().map(str::to_owned)));
    }
    Ok(ids)
}

/// Every task of `queue` with its status, read page by page from the `tasks` listing.
async fn list(http: &reqwest::Client, url: &str, token: &str, queue: &str) -> Result<HashMap<String, String>, String> {
    let mut statuses = HashMap::new();
    let mut after = Value::Null;
    loop {
        let body = json!({ "query": LIST, "variables": { "queue": queue, "after": after } });
        let page = post(http, url, token, &body).await.map_err(|e| format!("listing: {}", error_kind(&e)))?;
        let tasks = &page["data"]["tasks"];
        for node in tasks["nodes"].as_array().into_iter().flatten() {
            if let (Some(id), Some(status)) = (node["id"].as_str(), node["status"].as_str()) {
                statuses.insert(id.to_owned(), status.to_owned());
            }
        }
        if tasks["pageInfo"]["hasNextPage"] != true {
            return Ok(statuses);
        }
        after = tasks["pageInfo"]["endCursor"].clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_move_on_only_when_the_instance_does_not_answer() {
        let mut rotation = Rotation { graphql: Arc::new(vec!["a".into(), "b".into()]), at: 1 };
        assert_eq!(rotation.url(), "b");
        rotation.after("UNAVAILABLE");
        rotation.after("WRONG_ANSWER");
        assert_eq!(rotation.url(), "b");
        rotation.after("transport: error sending request for url (http://b/graphql)");
        assert_eq!(rotation.url(), "a");
        rotation.after("listing: transport");
        assert_eq!(rotation.url(), "b");
    }
}
