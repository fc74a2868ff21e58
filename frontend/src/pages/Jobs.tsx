// Training jobs: the list, and one job live (loss and metric curves, logs, state, cancel, and the
// failure envelope), fed by the websocket stream with REST for history and gaps.
import { type FormEvent, useCallback, useEffect, useMemo, useRef, useState } from "react";

import { allPages, api, ApiError, type Page } from "../api/http";
import { Chart } from "../Chart";
import type { LiveEvent } from "../live/client";
import { eventsAfter } from "../live/rest";
import { liveClient } from "../live/useLive";
import { navigate } from "../router";
import { ErrorPage, Loading } from "./Status";

export interface Job {
  id: number;
  name: string;
  kind: string;
  status: string;
  status_reason: string;
  wait_reason: string;
  progress: Record<string, number>;
  // The failure envelope: the exception's type, its message and the job's last log lines.
  error: { type?: string; message?: string; last_log_lines?: string[] } | Record<string, never>;
  model_version: number | null;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
  spec: { epochs?: number; model?: { name?: string } };
}

interface RestJobEvent { seq: number; kind: string; step: number; epoch: number; payload: Record<string, unknown>; created_at: string }

const ACTIVE = new Set(["queued", "running"]);

const CAN_CREATE = new Set(["owner", "admin", "analyst", "integrator"]);

export function Jobs({ slug, role = "" }: { slug: string; role?: string }) {
  const [items, setItems] = useState<Job[] | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [formOpen, setFormOpen] = useState(false);
  useEffect(() => {
    setItems(null);
    api<Page<Job>>(`tenants/${slug}/jobs/?page_size=100`).then((p) => { setItems(p.results); setFormOpen(p.results.length === 0); }, setError);
  }, [slug]);
  if (error) return <ErrorPage error={error} />;
  if (!items) return <Loading what="training jobs" />;
  return (
    <section>
      <h2>Training jobs</h2>
      {CAN_CREATE.has(role) ? (
        <details className="new-job" open={formOpen} onToggle={(e) => setFormOpen((e.target as HTMLDetailsElement).open)}>
          <summary>New training job</summary>
          {formOpen ? <JobCreate slug={slug} /> : null /* its lists load only when opened */}
        </details>
      ) : null}
      {items.length === 0 ? (
        <p className="empty">No training jobs yet{CAN_CREATE.has(role) ? ": start one above" : ""}.</p>
      ) : (
        <table>
          <caption className="sr-only">Training jobs of this organisation</caption>
          <thead><tr><th scope="col">Name</th><th scope="col">Kind</th><th scope="col">Status</th><th scope="col">Created</th></tr></thead>
          <tbody>
            {items.map((j) => (
              <tr key={j.id}>
                <td>
                  <a href={`/app/t/${slug}/jobs/${j.id}`}
                     onClick={(e) => { e.preventDefault(); navigate(`/app/t/${slug}/jobs/${j.id}`); }}>{j.name}</a>
                </td>
                <td>{j.kind}</td>
                <td><span className={`badge ${j.status}`}>{j.status}</span></td>
                <td>{new Date(j.created_at).toLocaleString()}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

interface ParamSchema { type: string; min?: number; max?: number; max_exclusive?: number; nullable?: boolean; default: unknown; max_items?: number; items?: { min?: number; max?: number } }
export interface CatalogueModel { name: string; inputs: string; description: string; params: Record<string, ParamSchema> }
interface Catalogue { models: CatalogueModel[]; optimizers: string[]; schedules: string[]; defaults: { epochs: number; batch_size: number; optimizer: { name: string; lr: number } } }
export interface Trainable { version: number; label: string }

/** A form value ("64, 32", "0.1", "true", "") as the JSON the param's schema takes, or an error message. */
export function parseParam(p: ParamSchema, raw: string): { value?: unknown; error?: string } {
  const text = raw.trim();
  if (p.type === "boolean") return { value: raw === "true" };
  if (text === "") return p.nullable ? { value: null } : { value: p.default };
  if (p.type === "array") {
    const parts = text.split(/[\s,]+/).filter(Boolean);
    const nums = parts.map(Number);
    if (nums.some((n) => !Number.isInteger(n))) return { error: "Whole numbers, separated by commas." };
    if (p.max_items !== undefined && nums.length > p.max_items) return { error: `At most ${p.max_items} numbers.` };
    const lo = p.items?.min ?? -Infinity, hi = p.items?.max ?? Infinity;
    if (nums.some((n) => n < lo || n > hi)) return { error: `Each from ${lo} to ${hi}.` };
    return { value: nums };
  }
  const n = Number(text);
  if (!Number.isFinite(n)) return { error: "A number." };
  if (p.type === "integer" && !Number.isInteger(n)) return { error: "A whole number." };
  if (p.min !== undefined && n < p.min) return { error: `At least ${p.min}.` };
  if (p.max !== undefined && n > p.max) return { error: `At most ${p.max}.` };
  if (p.max_exclusive !== undefined && n >= p.max_exclusive) return { error: `Below ${p.max_exclusive}.` };
  return { value: n };
}

function shown(v: unknown): string {
  if (v == null) return "";
  return Array.isArray(v) ? v.join(", ") : String(v);
}

/** The versions this tenant may train on: its own ready de-identified versions and the newest
 * version of every dataset shared with it under `process`. */
async function trainable(slug: string): Promise<Trainable[]> {
  const [own, shared] = await Promise.all([
    allPages<{ id: number; name: string }>(`tenants/${slug}/datasets/?page_size=500`),
    allPages<{ id: number; name: string; owner: string; permissions: string[]; version: { id: number; number: number } | null }>(
      `tenants/${slug}/shared-datasets/?page_size=500`).catch(() => []),
  ]);
  const versions = await Promise.all(own.map((d) =>
    allPages<{ id: number; number: number; kind: string; status: string; rows: number }>(`tenants/${slug}/datasets/${d.id}/versions/?page_size=500`)
      .then((vs) => vs.filter((v) => v.kind === "deidentified" && v.status === "ready")
        .map((v) => ({ version: v.id, label: `${d.name} v${v.number} (${v.rows} rows)` })))
      .catch(() => [] as Trainable[])));
  const granted = shared.filter((d) => d.permissions.includes("process") && d.version)
    .map((d) => ({ version: d.version!.id, label: `${d.name} v${d.version!.number}, shared by ${d.owner}` }));
  return [...versions.flat(), ...granted];
}

export function JobCreate({ slug }: { slug: string }) {
  const [cat, setCat] = useState<Catalogue | null>(null);
  const [versions, setVersions] = useState<Trainable[] | null>(null);
  const [loadError, setLoadError] = useState<unknown>(null);
  const [name, setName] = useState("");
  const [version, setVersion] = useState("");
  const [model, setModel] = useState("mlp");
  const [params, setParams] = useState<Record<string, string>>({});
  const [epochs, setEpochs] = useState("10");
  const [batch, setBatch] = useState("32");
  const [optimizer, setOptimizer] = useState("adamw");
  const [lr, setLr] = useState("0.001");
  const [fields, setFields] = useState<Record<string, string[]>>({});
  const [message, setMessage] = useState("");
  const [busy, setBusy] = useState(false);

  useEffect(() => {
    Promise.all([api<Catalogue>(`tenants/${slug}/training/catalogue/`), trainable(slug)]).then(([c, v]) => {
      setCat(c); setVersions(v);
      setEpochs(String(c.defaults.epochs)); setBatch(String(c.defaults.batch_size));
      setOptimizer(c.defaults.optimizer.name); setLr(String(c.defaults.optimizer.lr));
      if (v.length) setVersion(String(v[0].version));
    }, setLoadError);
  }, [slug]);

  const schema = cat?.models.find((m) => m.name === model);
  useEffect(() => {
    if (schema) setParams(Object.fromEntries(Object.entries(schema.params).map(([k, p]) => [k, shown(p.default)])));
  }, [schema]);

  if (loadError) return <p className="error" role="alert">The job form cannot load: {loadError instanceof Error ? loadError.message : String(loadError)}</p>;
  if (!cat || !versions) return <Loading what="the model registry" />;

  async function submit(e: FormEvent) {
    e.preventDefault();
    setMessage("");
    const errs: Record<string, string[]> = {};
    if (!name.trim()) errs.name = ["Name the job."];
    if (!version) errs.dataset_version = ["Choose a dataset version."];
    const p: Record<string, unknown> = {};
    for (const [k, s] of Object.entries(schema?.params ?? {})) {
      const r = parseParam(s, params[k] ?? "");
      if (r.error) errs[`spec.model.params.${k}`] = [r.error];
      else p[k] = r.value;
    }
    const ep = Number(epochs), bs = Number(batch), rate = Number(lr);
    if (!Number.isInteger(ep) || ep < 1) errs["spec.epochs"] = ["A whole number of at least 1."];
    if (!Number.isInteger(bs) || bs < 1) errs["spec.batch_size"] = ["A whole number of at least 1."];
    if (!Number.isFinite(rate) || rate <= 0) errs["spec.optimizer.lr"] = ["A positive number."];
    setFields(errs);
    if (Object.keys(errs).length) return;
    setBusy(true);
    try {
      const job = await api<Job>(`tenants/${slug}/jobs/`, {
        method: "POST",
        body: {
          name: name.trim(), dataset_version: Number(version),
          spec: { model: { name: model, params: p }, epochs: ep, batch_size: bs, optimizer: { name: optimizer, lr: rate } },
        },
      });
      navigate(`/app/t/${slug}/jobs/${job.id}`);
    } catch (err) {
      if (err instanceof ApiError) { setFields(err.fields); setMessage(err.message); } else setMessage(String(err));
    } finally {
      setBusy(false);
    }
  }

  const errId = (k: string) => `job-error-${k.replace(/[^a-z0-9_-]/gi, "-")}`;
  const err = (k: string) => (fields[k] ? <p id={errId(k)} className="field-error" role="alert">{fields[k].join(" ")}</p> : null);
  const described = (k: string) => (fields[k] ? errId(k) : undefined);
  // The server names list items too ("spec.model.params.hidden[0]"): shown under their parameter.
  const ofParam = (key: string, k: string) => key === `spec.model.params.${k}` || key.startsWith(`spec.model.params.${k}[`);
  const paramErrors = (k: string) => Object.entries(fields).filter(([key]) => ofParam(key, k)).map(([key, msgs]) => (
    <p key={key} id={errId(key)} className="field-error" role="alert">{key === `spec.model.params.${k}` ? "" : `${key.slice(18)}: `}{msgs.join(" ")}</p>
  ));
  const placed = new Set(["name", "dataset_version", "spec.epochs", "spec.batch_size", "spec.optimizer.lr", "spec.model", "spec.model.name"]);
  const unplaced = Object.entries(fields).filter(([key]) => !placed.has(key) && !Object.keys(schema?.params ?? {}).some((k) => ofParam(key, k)));
  const hasData = versions.length > 0;
  return (
    <form className="job-create" onSubmit={submit} noValidate aria-label="New training job">
      {!hasData ? <p className="empty">No dataset is ready to train on: upload and de-identify one, or ask a partner for a <code>process</code> grant.</p> : null}
      <label htmlFor="job-name">Name</label>
      <input id="job-name" aria-describedby={described("name")} value={name} onChange={(e) => { setName(e.target.value); setFields(({ name: _, ...rest }) => rest); }} aria-invalid={!!fields.name} />
      {err("name")}
      <label htmlFor="job-version">Dataset version</label>
      <select id="job-version" aria-describedby={described("dataset_version")} value={version} onChange={(e) => setVersion(e.target.value)} aria-invalid={!!fields.dataset_version}>
        {versions.map((v) => <option key={v.version} value={v.version}>{v.label}</option>)}
      </select>
      {err("dataset_version")}
      <label htmlFor="job-model">Model (from the registry)</label>
      <select id="job-model" value={model} onChange={(e) => setModel(e.target.value)} aria-describedby="job-model-help">
        {cat.models.map((m) => <option key={m.name} value={m.name}>{m.name} ({m.inputs})</option>)}
      </select>
      <p id="job-model-help" className="help">{schema?.description}</p>
      {err("spec.model.name")}{err("spec.model")}
      {Object.entries(schema?.params ?? {}).map(([k, p]) => (
        <div key={`${model}.${k}`} className="param">
          <label htmlFor={`param-${k}`}>{k}</label>
          {p.type === "boolean" ? (
            <select id={`param-${k}`} value={params[k] ?? "false"} onChange={(e) => setParams({ ...params, [k]: e.target.value })}>
              <option value="false">no</option><option value="true">yes</option>
            </select>
          ) : (
            <input id={`param-${k}`} value={params[k] ?? ""} inputMode={p.type === "array" ? "text" : "decimal"}
                   aria-invalid={Object.keys(fields).some((key) => ofParam(key, k))}
                   aria-describedby={[`param-${k}-help`, ...Object.keys(fields).filter((key) => ofParam(key, k)).map(errId)].join(" ")}
                   onChange={(e) => setParams({ ...params, [k]: e.target.value })} />
          )}
          <span id={`param-${k}-help`} className="help">
            {p.type === "array" ? `up to ${p.max_items} whole numbers from ${p.items?.min} to ${p.items?.max}, comma-separated`
              : p.type === "boolean" ? ""
                : `${p.max !== undefined ? `from ${p.min} to ${p.max}` : `from ${p.min}, below ${p.max_exclusive}`}${p.nullable ? "; empty for none" : ""}`}
          </span>
          {paramErrors(k)}
        </div>
      ))}
      <label htmlFor="job-epochs">Epochs</label>
      <input id="job-epochs" aria-describedby={described("spec.epochs")} inputMode="numeric" value={epochs} onChange={(e) => setEpochs(e.target.value)} aria-invalid={!!fields["spec.epochs"]} />
      {err("spec.epochs")}
      <label htmlFor="job-batch">Batch size</label>
      <input id="job-batch" aria-describedby={described("spec.batch_size")} inputMode="numeric" value={batch} onChange={(e) => setBatch(e.target.value)} aria-invalid={!!fields["spec.batch_size"]} />
      {err("spec.batch_size")}
      <label htmlFor="job-optimizer">Optimizer</label>
      <select id="job-optimizer" value={optimizer} onChange={(e) => setOptimizer(e.target.value)}>
        {cat.optimizers.map((o) => <option key={o} value={o}>{o}</option>)}
      </select>
      <label htmlFor="job-lr">Learning rate</label>
      <input id="job-lr" aria-describedby={described("spec.optimizer.lr")} inputMode="decimal" value={lr} onChange={(e) => setLr(e.target.value)} aria-invalid={!!fields["spec.optimizer.lr"]} />
      {err("spec.optimizer.lr")}
      {unplaced.map(([k, msgs]) => <p key={k} className="field-error" role="alert">{k.replace(/^spec\./, "")}: {msgs.join(" ")}</p>)}
      <button type="submit" disabled={busy || !hasData}>Start job</button>
      {message ? <p className="error" role="alert">{message}</p> : null}
    </form>
  );
}

export interface Curves { x: number[]; series: Record<string, (number | null)[]> }

/** Append a metrics event's values at its step (a key first seen later starts with nulls). */
export function addPoint(c: Curves, step: number, values: Record<string, unknown>): Curves {
  const x = [...c.x, step];
  const series: Record<string, (number | null)[]> = {};
  const keys = new Set([...Object.keys(c.series), ...Object.keys(values).filter((k) => typeof values[k] === "number")]);
  for (const k of keys) {
    const old = c.series[k] ?? new Array<number | null>(c.x.length).fill(null);
    series[k] = [...old, typeof values[k] === "number" ? (values[k] as number) : null];
  }
  return { x, series };
}

export function JobLive({ slug, id }: { slug: string; id: number }) {
  const stream = `tenants/${slug}/jobs/${id}`;
  const [job, setJob] = useState<Job | null>(null);
  const [curves, setCurves] = useState<Curves>({ x: [], series: {} });
  const [logs, setLogs] = useState<string[]>([]);
  const [error, setError] = useState<unknown>(null);
  const [ended, setEnded] = useState("");
  const [busy, setBusy] = useState(false);
  const timer = useRef<ReturnType<typeof setTimeout> | null>(null);

  const refresh = useCallback(async () => setJob(await api<Job>(`tenants/${slug}/jobs/${id}/`)), [slug, id]);
  const apply = useCallback((ev: LiveEvent) => {
    const data = (ev.payload.data ?? {}) as Record<string, unknown>;
    if (ev.type === "job.metrics") setCurves((c) => addPoint(c, Number(ev.payload.step ?? c.x.length), data));
    else if (ev.type === "job.log") setLogs((l) => [...l.slice(-199), String(data.line ?? "")]);
    else {
      if (timer.current) clearTimeout(timer.current);
      timer.current = setTimeout(() => void refresh().catch(setError), 100);
    }
  }, [refresh]);

  useEffect(() => {
    let cancelled = false;
    let unsubscribe = () => undefined as void;
    const shape = (e: RestJobEvent, prev: number): LiveEvent => ({
      type: `job.${e.kind}`, stream, seq: e.seq, prev, time: e.created_at, payload: { step: e.step, epoch: e.epoch, data: e.payload },
    });
    const read = (after: number) => eventsAfter<RestJobEvent>(`tenants/${slug}/jobs/${id}/events/`, after, shape);
    setJob(null); setCurves({ x: [], series: {} }); setLogs([]); setError(null); setEnded("");
    (async () => {
      await refresh();
      const history = await read(0);
      if (cancelled) return;
      history.forEach(apply);
      unsubscribe = liveClient().subscribe(stream, {
        onEvent: apply,
        resync: read,
        onEnd: (reason) => setEnded(reason === "signed_out" ? "You were signed out." : "Your access to this job ended (its dataset's grant, or your role)."),
      }, history.length ? history[history.length - 1].seq : 0);
    })().catch((e) => !cancelled && setError(e));
    return () => {
      cancelled = true;
      unsubscribe();
      if (timer.current) clearTimeout(timer.current);
    };
  }, [slug, id, stream, refresh, apply]);

  const series = useMemo(() => Object.entries(curves.series).sort(([a], [b]) => a.localeCompare(b)).slice(0, 8)
    .map(([label, values]) => ({ label, values })), [curves]);

  if (error) return <ErrorPage error={error} />;
  if (!job) return <Loading what="the job" />;

  async function cancel() {
    setBusy(true);
    try {
      setJob(await api<Job>(`tenants/${slug}/jobs/${id}/`, { method: "DELETE" }));
    } catch (e) {
      setError(e instanceof ApiError ? e : new Error(String(e)));
    } finally {
      setBusy(false);
    }
  }

  const err = job.error as Job["error"];
  return (
    <section className="job">
      <header>
        <h2>{job.name}</h2>
        <p>
          <span className={`badge ${job.status}`} data-testid="job-status">{job.status}</span>{" "}
          {job.spec.model?.name ?? "model"} · {job.spec.epochs ?? "?"} epochs
          {job.model_version ? ` · model version ${job.model_version}` : ""}
        </p>
        {job.status === "queued" && job.wait_reason ? <p className="reason">Waiting: {job.wait_reason}</p> : null}
        {ACTIVE.has(job.status) ? <button type="button" disabled={busy} onClick={() => void cancel()}>Cancel job</button> : null}
      </header>
      {ended ? <p className="error" role="alert">{ended}</p> : null}
      {job.status === "failed" && err && "message" in err ? (
        <section className="failure" role="alert">
          <h3>Why it failed</h3>
          <p>{err.type ? `${err.type}: ` : ""}{err.message}</p>
          {err.last_log_lines?.length ? <pre>{err.last_log_lines.join("\n")}</pre> : null}
        </section>
      ) : null}
      <h3>Curves</h3>
      <Chart title="Training and validation metrics" x={curves.x} series={series} xLabel="step" />
      <h3>Log</h3>
      {logs.length ? <pre className="log" data-testid="job-log">{logs.join("\n")}</pre> : <p className="empty">No log lines yet.</p>}
    </section>
  );
}
