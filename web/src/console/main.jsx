// Taskwire's operator console: a Preact app on the public GraphQL API, bundled by
// web/build.mjs and served by the binary at /console.
import { render } from "preact";
import { useCallback, useEffect, useRef, useState } from "preact/hooks";
import { gql, session, subscribe } from "./api.js";
import { STATUSES, TERMINAL, age, json, since, when } from "./util.js";
import "./console.css";

// ---- routing: #/queues, #/workers, #/tasks?queue=…&status=…, #/tasks/<id> -------------

function parseRoute() {
  const hash = window.location.hash.replace(/^#/, "") || "/queues";
  const [path, search = ""] = hash.split("?");
  const parts = path.split("/").filter(Boolean);
  return { page: parts[0] ?? "queues", id: parts[1] ? decodeURIComponent(parts[1]) : null, params: new URLSearchParams(search) };
}

function useRoute() {
  const [route, setRoute] = useState(parseRoute);
  useEffect(() => {
    const onChange = () => setRoute(parseRoute());
    window.addEventListener("hashchange", onChange);
    return () => window.removeEventListener("hashchange", onChange);
  }, []);
  return route;
}

// ---- shared pieces ---------------------------------------------------------------------

/// Points a sparkline keeps: one a second (or one per queueStats update), a minute's worth.
const HISTORY = 60;

/// Messages for the operator: one live region, so screen readers announce them.
function useNotice() {
  const [notice, setNotice] = useState(null);
  const show = useCallback((kind, text) => setNotice({ kind, text, at: Date.now() }), []);
  return [notice, show];
}

function Notice({ notice }) {
  return (
    <p class={`notice ${notice?.kind ?? ""}`} role={notice?.kind === "error" ? "alert" : "status"} aria-live="polite">
      {notice?.text ?? ""}
    </p>
  );
}

function Status({ status }) {
  return <span class={`status status-${status.toLowerCase()}`}>{status}</span>;
}

/// A small inline SVG line of the last `HISTORY` values, newest at the right edge (no
/// style attributes: the CSP allows none).
function Sparkline({ values, label }) {
  const width = 120;
  const height = 24;
  const max = Math.max(1, ...values);
  const step = width / (HISTORY - 1);
  const x = (i) => width - (values.length - 1 - i) * step;
  const y = (v) => height - (v / max) * (height - 2) - 1;
  const points = values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`);
  return (
    <svg class="sparkline" width={width} height={height} viewBox={`0 0 ${width} ${height}`} role="img" aria-label={label}>
      <line class="baseline" x1="0" y1={height - 0.5} x2={width} y2={height - 0.5} />
      {values.length === 1 && <circle cx={width - 1.5} cy={y(values[0])} r="1.5" fill="currentColor" />}
      <polyline points={points.join(" ")} fill="none" stroke="currentColor" stroke-width="1.5" />
    </svg>
  );
}

// ---- login -----------------------------------------------------------------------------

function Login({ onLogin }) {
  const [token, setToken] = useState("");
  const [error, setError] = useState(null);
  const submit = async (event) => {
    event.preventDefault();
    const value = token.trim().replace(/^Bearer\s+/i, "");
    try {
      const { me } = await gql("query ConsoleMe { me { subject roles } }", {}, value);
      if (!me.roles.includes("OPERATOR") && !me.roles.includes("ADMIN")) {
        setError(`${me.subject} has roles ${me.roles.join(", ") || "none"}: the console needs operator or admin.`);
        return;
      }
      session.token = value;
      onLogin(me);
    } catch (e) {
      setError(e.message);
    }
  };
  return (
    <main class="login">
      <h1>Taskwire console</h1>
      <form onSubmit={submit}>
        <label for="token">Operator or admin token</label>
        <textarea id="token" rows="5" value={token} onInput={(e) => setToken(e.currentTarget.value)} required
          placeholder="eyJ…  (taskwire token --sub you --role admin)" autocomplete="off" spellcheck={false} />
        <p class="hint">Kept in this tab's session storage only.</p>
        <button type="submit">Sign in</button>
        {error && <p class="notice error" role="alert">{error}</p>}
      </form>
    </main>
  );
}

// ---- queues ----------------------------------------------------------------------------

const QUEUE_FIELDS = "name paused rateLimitPerSecond maxConcurrency maxAttempts leaseSeconds";
const STATS_FIELDS = "name scheduled queued assigned running succeeded cancelled dead oldestQueuedAgeMs at";

function Queues({ me, notify }) {
  const admin = me.roles.includes("ADMIN");
  const [queues, setQueues] = useState(null);
  const [stats, setStats] = useState({});
  const [rates, setRates] = useState({});
  const [editing, setEditing] = useState(null);
  const previous = useRef({});

  const load = useCallback(async () => {
    try {
      const data = await gql(`query ConsoleQueues { queues { ${QUEUE_FIELDS} stats { ${STATS_FIELDS} } } }`);
      setQueues(data.queues);
      setStats((old) => Object.fromEntries(data.queues.map((q) => [q.name, old[q.name] ?? q.stats])));
    } catch (e) {
      notify("error", e.message);
    }
  }, [notify]);
  useEffect(() => void load(), [load]);

  // One queueStats subscription per queue: counts now, then after changes.
  const names = queues?.map((q) => q.name).join(",") ?? "";
  useEffect(() => {
    if (!names) return undefined;
    const stops = names.split(",").map((name) =>
      subscribe(`subscription ConsoleQueueStats($name: String!) { queueStats(name: $name) { ${STATS_FIELDS} } }`, { name },
        ({ queueStats }) => {
          setStats((old) => ({ ...old, [name]: queueStats }));
          // Finished tasks per second between two updates.
          const before = previous.current[name];
          const finished = queueStats.succeeded + queueStats.dead + queueStats.cancelled;
          const at = new Date(queueStats.at).getTime();
          if (before && at > before.at) {
            const rate = Math.max(0, (finished - before.finished) / ((at - before.at) / 1000));
            setRates((old) => ({ ...old, [name]: [...(old[name] ?? []), rate].slice(-HISTORY) }));
          }
          previous.current[name] = { finished, at };
        },
        (e) => notify("error", e.message)));
    return () => stops.forEach((stop) => stop());
  }, [names, notify]);

  const act = async (label, query, variables) => {
    try {
      const data = await gql(query, variables);
      notify("ok", typeof label === "function" ? label(data) : label);
      await load();
    } catch (e) {
      notify("error", e.message);
    }
  };

  if (!queues) return <p>Loading queues…</p>;
  return (
    <section aria-labelledby="queues-title">
      <h1 id="queues-title">Queues</h1>
      <LiveThroughput notify={notify} />
      {queues.length === 0 ? <p>No queue has tasks or settings yet.</p> : (
        <div class="scroll">
          <table>
            <thead>
              <tr>
                <th scope="col">Queue</th><th scope="col">State</th>
                <th scope="col" class="num">Queued</th><th scope="col" class="num">Running</th>
                <th scope="col" class="num">Scheduled</th><th scope="col" class="num">Dead</th>
                <th scope="col" class="num">Done/s</th><th scope="col">Oldest queued</th>
                <th scope="col">Limits</th>{admin && <th scope="col">Actions</th>}
              </tr>
            </thead>
            <tbody>
              {queues.map((queue) => {
                const s = stats[queue.name] ?? queue.stats;
                const series = rates[queue.name] ?? [];
                return (
                  <tr key={queue.name} data-queue={queue.name}>
                    <th scope="row"><a href={`#/tasks?queue=${encodeURIComponent(queue.name)}`}>{queue.name}</a></th>
                    <td>{queue.paused ? <span class="status status-paused">PAUSED</span> : <span class="status status-active">ACTIVE</span>}</td>
                    <td class="num" data-field="queued">{s.queued}</td>
                    <td class="num" data-field="running">{s.assigned + s.running}</td>
                    <td class="num" data-field="scheduled">{s.scheduled}</td>
                    <td class="num" data-field="dead">
                      {s.dead > 0 ? <a href={`#/tasks?queue=${encodeURIComponent(queue.name)}&status=DEAD`}>{s.dead}</a> : 0}
                    </td>
                    <td class="num">
                      {(series.at(-1) ?? 0).toFixed(1)}
                      <Sparkline values={series} label={`finished tasks per second in ${queue.name}`} />
                    </td>
                    <td>{age(s.oldestQueuedAgeMs)}</td>
                    <td class="limits">
                      {queue.rateLimitPerSecond == null ? "no rate limit" : `${queue.rateLimitPerSecond}/s`},{" "}
                      {queue.maxConcurrency == null ? "no cap" : `≤ ${queue.maxConcurrency} at once`},{" "}
                      {queue.maxAttempts ?? 5} attempts
                    </td>
                    {admin && (
                      <td class="actions">
                        {queue.paused
                          ? <button type="button" onClick={() => act(`${queue.name} resumed`, "mutation ConsoleResume($name: String!) { resumeQueue(name: $name) { name paused } }", { name: queue.name })}>Resume</button>
                          : <button type="button" onClick={() => act(`${queue.name} paused`, "mutation ConsolePause($name: String!) { pauseQueue(name: $name) { name paused } }", { name: queue.name })}>Pause</button>}
                        <button type="button" onClick={() => setEditing(queue)}>Configure</button>
                        <button type="button" disabled={s.dead === 0} onClick={() => {
                          if (window.confirm(`Requeue the ${s.dead} dead tasks of ${queue.name}?`)) {
                            act((d) => `${d.requeueDeadTasks} dead tasks of ${queue.name} requeued`,
                              "mutation ConsoleRequeue($queue: String!) { requeueDeadTasks(queue: $queue) }", { queue: queue.name });
                          }
                        }}>Requeue dead</button>
                      </td>
                    )}
                  </tr>
                );
              })}
            </tbody>
          </table>
        </div>
      )}
      {editing && <Configure queue={editing} onClose={() => setEditing(null)} onSave={async (input) => {
        await act(`${editing.name} configured`, `mutation ConsoleConfigure($input: ConfigureQueueInput!) { configureQueue(input: $input) { ${QUEUE_FIELDS} } }`, { input });
        setEditing(null);
      }} />}
    </section>
  );
}

/// Completions per second and created → succeeded latency over every queue, from the
/// `taskEvents` subscription (no polling).
function LiveThroughput({ notify }) {
  const [series, setSeries] = useState({ rate: [], latency: [] });
  const bucket = useRef({ count: 0, latencies: [] });
  useEffect(() => {
    const stop = subscribe(
      "subscription ConsoleSucceeded { taskEvents(filter: { status: [SUCCEEDED] }) { at task { createdAt } } }", {},
      ({ taskEvents }) => {
        bucket.current.count += 1;
        bucket.current.latencies.push(new Date(taskEvents.at) - new Date(taskEvents.task.createdAt));
      },
      (e) => notify("error", e.message));
    // Folds what the subscription delivered into one point per second (a clock, not a poll).
    const timer = setInterval(() => {
      const { count, latencies } = bucket.current;
      bucket.current = { count: 0, latencies: [] };
      const sorted = latencies.sort((a, b) => a - b);
      const p90 = sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * 0.9))] : 0;
      setSeries((old) => ({ rate: [...old.rate, count].slice(-HISTORY), latency: [...old.latency, p90].slice(-HISTORY) }));
    }, 1000);
    return () => { stop(); clearInterval(timer); };
  }, [notify]);
  return (
    <div class="live" aria-label="Live throughput">
      <div><span class="label">Succeeded / s</span> <strong>{series.rate.at(-1) ?? 0}</strong>
        <Sparkline values={series.rate} label="tasks succeeded per second, last minute" /></div>
      <div><span class="label">Created → succeeded p90</span> <strong>{age(series.latency.at(-1) ?? 0)}</strong>
        <Sparkline values={series.latency} label="created to succeeded latency, last minute" /></div>
    </div>
  );
}

function Configure({ queue, onClose, onSave }) {
  const dialog = useRef(null);
  const [rate, setRate] = useState(queue.rateLimitPerSecond ?? "");
  const [concurrency, setConcurrency] = useState(queue.maxConcurrency ?? "");
  const [attempts, setAttempts] = useState(queue.maxAttempts ?? "");
  useEffect(() => {
    dialog.current?.showModal();
  }, []);
  const number = (text, parse) => (String(text).trim() === "" ? null : parse(text));
  const submit = (event) => {
    event.preventDefault();
    onSave({
      name: queue.name,
      rateLimitPerSecond: number(rate, parseFloat),
      maxConcurrency: number(concurrency, (t) => parseInt(t, 10)),
      maxAttempts: number(attempts, (t) => parseInt(t, 10)),
    });
  };
  return (
    <dialog ref={dialog} onClose={onClose} aria-labelledby="configure-title">
      <form onSubmit={submit}>
        <h2 id="configure-title">Configure {queue.name}</h2>
        <label for="cfg-rate">Rate limit (offers per second, empty = none)</label>
        <input id="cfg-rate" type="number" min="0" step="any" value={rate} onInput={(e) => setRate(e.currentTarget.value)} />
        <label for="cfg-concurrency">Max concurrency (empty = none)</label>
        <input id="cfg-concurrency" type="number" min="1" step="1" value={concurrency} onInput={(e) => setConcurrency(e.currentTarget.value)} />
        <label for="cfg-attempts">Max attempts of new tasks (empty = 5)</label>
        <input id="cfg-attempts" type="number" min="1" max="100" step="1" value={attempts} onInput={(e) => setAttempts(e.currentTarget.value)} />
        <div class="buttons">
          <button type="submit">Save</button>
          <button type="button" onClick={() => dialog.current?.close()}>Cancel</button>
        </div>
      </form>
    </dialog>
  );
}

// ---- workers ---------------------------------------------------------------------------

function Workers({ me, notify }) {
  const admin = me.roles.includes("ADMIN");
  const [workers, setWorkers] = useState(null);
  const load = useCallback(async () => {
    try {
      const data = await gql("query ConsoleWorkers { workers { id name queues capacity activeTasks status lastSeenAt } }");
      setWorkers(data.workers);
    } catch (e) {
      notify("error", e.message);
    }
  }, [notify]);
  useEffect(() => void load(), [load]);
  const drain = async (worker) => {
    if (!window.confirm(`Drain ${worker.name}? It finishes its running tasks and gets no new ones.`)) return;
    try {
      await gql("mutation ConsoleDrain($id: ID!) { drainWorker(id: $id) { id status } }", { id: worker.id });
      notify("ok", `${worker.name} is draining`);
      await load();
    } catch (e) {
      notify("error", e.message);
    }
  };
  if (!workers) return <p>Loading workers…</p>;
  return (
    <section aria-labelledby="workers-title">
      <h1 id="workers-title">Workers</h1>
      <p><button type="button" onClick={load}>Refresh</button></p>
      {workers.length === 0 ? <p>No worker has registered.</p> : (
        <div class="scroll">
          <table>
            <thead>
              <tr><th scope="col">Worker</th><th scope="col">Status</th><th scope="col">Queues</th>
                <th scope="col" class="num">Active / capacity</th><th scope="col">Last seen</th>{admin && <th scope="col">Actions</th>}</tr>
            </thead>
            <tbody>
              {workers.map((w) => (
                <tr key={w.id} data-worker={w.id}>
                  <th scope="row">{w.name}<div class="sub">{w.id}</div></th>
                  <td><Status status={w.status} /></td>
                  <td>{w.queues.join(", ")}</td>
                  <td class="num">{w.activeTasks} / {w.capacity}</td>
                  <td>{since(w.lastSeenAt)}</td>
                  {admin && <td class="actions"><button type="button" disabled={w.status !== "ONLINE"} onClick={() => drain(w)}>Drain</button></td>}
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}

// ---- tasks -----------------------------------------------------------------------------

const PAGE = 25;

function Tasks({ params, notify }) {
  const filter = {
    queue: params.get("queue") || undefined,
    kind: params.get("kind") || undefined,
    createdBy: params.get("createdBy") || undefined,
    status: params.get("status") ? [params.get("status")] : undefined,
  };
  const key = params.toString();
  const [cursors, setCursors] = useState([null]);
  const [page, setPage] = useState(null);
  useEffect(() => setCursors([null]), [key]);
  const after = cursors.at(-1);
  useEffect(() => {
    let live = true;
    gql(`query ConsoleTasks($filter: TaskFilter, $first: Int, $after: String) {
        tasks(filter: $filter, first: $first, after: $after) {
          edges { node { id queue kind status priority attempts maxAttempts createdBy createdAt } }
          pageInfo { hasNextPage endCursor } } }`, { filter, first: PAGE, after })
      .then((data) => live && setPage(data.tasks))
      .catch((e) => notify("error", e.message));
    return () => { live = false; };
  }, [key, after, notify]);

  const apply = (event) => {
    event.preventDefault();
    const form = new FormData(event.currentTarget);
    const next = new URLSearchParams();
    for (const [name, value] of form) if (value) next.set(name, value);
    window.location.hash = `#/tasks?${next}`;
  };
  return (
    <section aria-labelledby="tasks-title">
      <h1 id="tasks-title">Tasks</h1>
      {/* Uncontrolled fields, filled from the route: a new route makes a new form. */}
      <form class="filters" onSubmit={apply} key={key}>
        <label>Queue <input name="queue" defaultValue={filter.queue ?? ""} /></label>
        <label>Kind <input name="kind" defaultValue={filter.kind ?? ""} /></label>
        <label>Created by <input name="createdBy" defaultValue={filter.createdBy ?? ""} /></label>
        <label>Status
          <select name="status">
            <option value="">any</option>
            {STATUSES.map((s) => <option key={s} value={s} selected={params.get("status") === s}>{s}</option>)}
          </select>
        </label>
        <button type="submit">Filter</button>
      </form>
      {!page ? <p>Loading tasks…</p> : page.edges.length === 0 ? <p>No task matches.</p> : (
        <div class="scroll">
          <table>
            <thead>
              <tr><th scope="col">Task</th><th scope="col">Status</th><th scope="col">Queue</th><th scope="col">Kind</th>
                <th scope="col" class="num">Attempts</th><th scope="col">Created by</th><th scope="col">Created</th></tr>
            </thead>
            <tbody>
              {page.edges.map(({ node: t }) => (
                <tr key={t.id} data-task={t.id}>
                  <th scope="row"><a href={`#/tasks/${t.id}`} class="mono">{t.id}</a></th>
                  <td><Status status={t.status} /></td>
                  <td>{t.queue}</td><td>{t.kind}</td>
                  <td class="num">{t.attempts} / {t.maxAttempts}</td>
                  <td>{t.createdBy}</td><td>{when(t.createdAt)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      <nav class="pager" aria-label="Pages">
        <button type="button" disabled={cursors.length === 1} onClick={() => setCursors(cursors.slice(0, -1))}>Newer</button>
        <button type="button" disabled={!page?.pageInfo.hasNextPage} onClick={() => setCursors([...cursors, page.pageInfo.endCursor])}>Older</button>
      </nav>
    </section>
  );
}

const TASK_FIELDS = `id queue kind status priority attempts maxAttempts payload result lastError createdBy
  createdAt updatedAt runAt deadline leaseExpiresAt version worker { id name }`;
const EVENT_FIELDS = "seq status previousStatus attempt workerId message at";

function TaskPage({ id, me, notify }) {
  const [task, setTask] = useState(undefined);
  const [events, setEvents] = useState([]);
  const lastSeq = useRef(0);
  const operator = me.roles.includes("OPERATOR") || me.roles.includes("ADMIN");

  useEffect(() => {
    let stop = () => {};
    let live = true;
    (async () => {
      try {
        const data = await gql(`query ConsoleTask($id: ID!) { task(id: $id) { ${TASK_FIELDS} events(last: 100) { ${EVENT_FIELDS} } } }`, { id });
        if (!live) return;
        setTask(data.task);
        if (!data.task) return;
        setEvents(data.task.events);
        lastSeq.current = data.task.events.at(-1)?.seq ?? 0;
        // Everything after the last event read, then live: no gap, no duplicate.
        stop = subscribe(`subscription ConsoleTaskUpdated($id: ID!, $afterSeq: Int) {
            taskUpdated(id: $id, afterSeq: $afterSeq) { ${EVENT_FIELDS} task { ${TASK_FIELDS} } } }`,
          { id, afterSeq: lastSeq.current },
          ({ taskUpdated }) => {
            if (taskUpdated.seq <= lastSeq.current) return;
            lastSeq.current = taskUpdated.seq;
            const { task: now, ...event } = taskUpdated;
            setEvents((old) => [...old, event]);
            setTask(now);
          },
          (e) => notify("error", e.message));
      } catch (e) {
        notify("error", e.message);
      }
    })();
    return () => { live = false; stop(); };
  }, [id, notify]);

  const act = async (name, query, variables) => {
    try {
      const data = await gql(query, variables);
      notify("ok", `${name}: ${Object.values(data)[0].status}`);
    } catch (e) {
      notify("error", e.message);
    }
  };

  if (task === undefined) return <p>Loading task…</p>;
  if (task === null) return <p>No task {id} (or you may not see it).</p>;
  const canRetry = ["DEAD", "CANCELLED", "SCHEDULED"].includes(task.status);
  return (
    <section aria-labelledby="task-title">
      <h1 id="task-title">Task <span class="mono">{task.id}</span></h1>
      <p class="task-status">Status <Status status={task.status} /> <span class="sub">version {task.version}</span></p>
      {operator && (
        <p class="actions">
          <button type="button" disabled={!canRetry} onClick={() => act("Retried", "mutation ConsoleRetry($id: ID!) { retryTask(id: $id) { id status } }", { id })}>Retry</button>
          <button type="button" disabled={TERMINAL.includes(task.status)} onClick={() => {
            const reason = window.prompt("Reason for cancelling (optional)", "cancelled from the console");
            if (reason !== null) act("Cancelled", "mutation ConsoleCancel($id: ID!, $reason: String) { cancelTask(id: $id, reason: $reason) { id status } }", { id, reason });
          }}>Cancel</button>
        </p>
      )}
      <dl class="facts">
        <dt>Queue</dt><dd><a href={`#/tasks?queue=${encodeURIComponent(task.queue)}`}>{task.queue}</a></dd>
        <dt>Kind</dt><dd>{task.kind}</dd>
        <dt>Priority</dt><dd>{task.priority}</dd>
        <dt>Attempts</dt><dd>{task.attempts} / {task.maxAttempts}</dd>
        <dt>Created</dt><dd>{when(task.createdAt)} by {task.createdBy}</dd>
        <dt>Run at</dt><dd>{when(task.runAt)}</dd>
        <dt>Deadline</dt><dd>{when(task.deadline)}</dd>
        <dt>Worker</dt><dd>{task.worker ? `${task.worker.name} (${task.worker.id})` : "–"}</dd>
        <dt>Lease until</dt><dd>{when(task.leaseExpiresAt)}</dd>
        {task.lastError && <><dt>Last error</dt><dd class="error-text">{task.lastError}</dd></>}
      </dl>
      <div class="columns">
        <div><h2>Payload</h2><pre>{json(task.payload)}</pre></div>
        <div><h2>Result</h2><pre>{json(task.result)}</pre></div>
      </div>
      <h2>History <span class="sub">(live)</span></h2>
      <ol class="history" aria-live="polite">
        {events.map((e) => (
          <li key={e.seq} data-seq={e.seq}>
            <span class="seq">#{e.seq}</span> {e.previousStatus ? <><Status status={e.previousStatus} /> → </> : null}
            <Status status={e.status} /> <span class="sub">{when(e.at)}{e.workerId ? ` · ${e.workerId}` : ""} · attempt {e.attempt}</span>
            {e.message && <div class="message">{e.message}</div>}
          </li>
        ))}
      </ol>
    </section>
  );
}

// ---- the app ---------------------------------------------------------------------------

function App() {
  const route = useRoute();
  const [me, setMe] = useState(undefined);
  const [notice, notify] = useNotice();

  useEffect(() => {
    if (!session.token) return setMe(null);
    gql("query ConsoleMe { me { subject roles } }").then((d) => setMe(d.me)).catch(() => {
      session.token = null;
      setMe(null);
    });
  }, []);
  // Each page starts without the previous page's message.
  useEffect(() => notify(null, ""), [route.page, route.id, notify]);

  if (me === undefined) return <p>Loading…</p>;
  if (me === null) return <Login onLogin={setMe} />;
  const signOut = () => {
    session.token = null;
    setMe(null);
  };
  const link = (page, label) => (
    <a href={`#/${page}`} aria-current={route.page === page ? "page" : undefined}>{label}</a>
  );
  let content;
  if (route.page === "workers") content = <Workers me={me} notify={notify} />;
  else if (route.page === "tasks" && route.id) content = <TaskPage key={route.id} id={route.id} me={me} notify={notify} />;
  else if (route.page === "tasks") content = <Tasks params={route.params} notify={notify} />;
  else content = <Queues me={me} notify={notify} />;
  return (
    <>
      <header>
        <a class="skip" href="#/" onClick={(e) => { e.preventDefault(); document.getElementById("content")?.focus(); }}>Skip to content</a>
        <span class="brand">Taskwire</span>
        <nav aria-label="Main">{link("queues", "Queues")}{link("workers", "Workers")}{link("tasks", "Tasks")}</nav>
        <span class="who">{me.subject} <button type="button" onClick={signOut}>Sign out</button></span>
      </header>
      <main id="content" tabindex="-1">
        <Notice notice={notice} />
        {content}
      </main>
    </>
  );
}

render(<App />, document.getElementById("console"));
