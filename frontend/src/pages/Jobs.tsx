// Training jobs: the list, and one job live (loss and metric curves, logs, state, cancel, and the
// failure envelope), fed by the websocket stream with REST for history and gaps.
import { useCallback, useEffect, useMemo, useRef, useState } from "react";

import { api, ApiError, type Page } from "../api/http";
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

export function Jobs({ slug }: { slug: string }) {
  const [items, setItems] = useState<Job[] | null>(null);
  const [error, setError] = useState<unknown>(null);
  useEffect(() => {
    setItems(null);
    api<Page<Job>>(`tenants/${slug}/jobs/?page_size=100`).then((p) => setItems(p.results), setError);
  }, [slug]);
  if (error) return <ErrorPage error={error} />;
  if (!items) return <Loading what="training jobs" />;
  return (
    <section>
      <h2>Training jobs</h2>
      {items.length === 0 ? (
        <p className="empty">No training jobs yet. Create one over the API (<a href="/api/docs/">API docs</a>).</p>
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
