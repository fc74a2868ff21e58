// The audit log, for owners, admins and auditors: filter, live (the activity stream), verify the
// hash chain, export. Another role gets the API's 403, shown as "No access".
import { type FormEvent, useCallback, useEffect, useState } from "react";

import { api, ApiError, type Page } from "../api/http";
import type { LiveEvent } from "../live/client";
import { liveClient } from "../live/useLive";
import { ErrorPage, Loading } from "./Status";

interface AuditEvent {
  seq: number; created_at: string; actor_type: string; actor_label: string | null; action: string;
  target_type: string | null; target_id: string | null; outcome: string; details?: Record<string, unknown>;
}
interface Verify { ok: boolean; num_events: number; problems: { seq: number; kind: string; message: string }[] }
export interface AuditFilters { action_prefix: string; outcome: string; actor_type: string }

/** The list and export query of the filters (empty ones left out). */
export function auditQuery(f: AuditFilters, extra: Record<string, string> = {}): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries({ ...f, ...extra })) if (v) q.set(k, v);
  return q.toString();
}

const EMPTY: AuditFilters = { action_prefix: "", outcome: "", actor_type: "" };

export function Audit({ slug }: { slug: string }) {
  const [events, setEvents] = useState<AuditEvent[] | null>(null);
  const [filters, setFilters] = useState<AuditFilters>(EMPTY);
  const [applied, setApplied] = useState<AuditFilters>(EMPTY);
  const [open, setOpen] = useState<number | null>(null);
  const [verify, setVerify] = useState<Verify | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);

  const load = useCallback(async (f: AuditFilters) => {
    const page = await api<Page<AuditEvent>>(`tenants/${slug}/audit-events/?${auditQuery(f, { page_size: "100" })}`);
    setEvents(page.results);
  }, [slug]);

  useEffect(() => {
    setEvents(null);
    load(applied).catch(setError);
  }, [load, applied]);

  useEffect(() => {
    // New events as they are written (summaries; the details are read over REST).
    const unsubscribe = liveClient().subscribe(`tenants/${slug}/activity`, {
      onEvent: (ev: LiveEvent) => {
        const p = ev.payload as Omit<AuditEvent, "seq" | "created_at">;
        const matches = (!applied.action_prefix || p.action.startsWith(applied.action_prefix))
          && (!applied.outcome || p.outcome === applied.outcome) && (!applied.actor_type || p.actor_type === applied.actor_type);
        if (matches) setEvents((old) => (old ? [{ ...p, seq: ev.seq, created_at: ev.time }, ...old].slice(0, 500) : old));
      },
    });
    return unsubscribe;
  }, [slug, applied]);

  async function runVerify() {
    setBusy(true);
    try {
      setVerify(await api<Verify>(`tenants/${slug}/audit-events/verify/`, { method: "POST" }));
    } catch (e) {
      setError(e instanceof ApiError ? e : new Error(String(e)));
    } finally {
      setBusy(false);
    }
  }

  function apply(e: FormEvent) {
    e.preventDefault();
    setApplied({ ...filters, action_prefix: filters.action_prefix.trim() });
  }

  if (error) return <ErrorPage error={error} />;
  const shown = events?.find((e) => e.seq === open);
  return (
    <section className="audit">
      <h2>Audit log</h2>
      <form className="inline" onSubmit={apply}>
        <label htmlFor="a-action">Action starts with</label>
        <input id="a-action" value={filters.action_prefix} onChange={(e) => setFilters({ ...filters, action_prefix: e.target.value })} />
        <label htmlFor="a-outcome">Outcome</label>
        <select id="a-outcome" value={filters.outcome} onChange={(e) => setFilters({ ...filters, outcome: e.target.value })}>
          <option value="">any</option><option value="success">success</option><option value="denied">denied</option><option value="error">error</option>
        </select>
        <label htmlFor="a-actor">Actor</label>
        <select id="a-actor" value={filters.actor_type} onChange={(e) => setFilters({ ...filters, actor_type: e.target.value })}>
          <option value="">any</option><option value="user">user</option><option value="api_key">API key</option>
          <option value="system">system</option><option value="anonymous">anonymous</option>
        </select>
        <button type="submit">Filter</button>
      </form>
      <p className="actions">
        <button type="button" disabled={busy} onClick={() => void runVerify()}>Verify the hash chain</button>{" "}
        <a href={`/api/v1/tenants/${slug}/audit-events/export/?${auditQuery(applied, { file_format: "csv" })}`}>Export CSV</a>{" "}
        <a href={`/api/v1/tenants/${slug}/audit-events/export/?${auditQuery(applied, { file_format: "json" })}`}>Export JSON</a>
      </p>
      {verify ? (
        <p className={verify.ok ? "ok" : "error"} role="status" data-testid="verify-result">
          {verify.ok ? `Chain verified: ${verify.num_events} events, no problem found.`
            : `Chain broken: ${verify.problems.map((p) => `#${p.seq} ${p.kind}: ${p.message}`).join("; ")}`}
        </p>
      ) : null}
      {!events ? <Loading what="audit events" /> : events.length === 0 ? <p className="empty">No events match.</p> : (
        <table data-testid="audit-events">
          <thead><tr><th scope="col">#</th><th scope="col">Time</th><th scope="col">Actor</th><th scope="col">Action</th><th scope="col">Target</th><th scope="col">Outcome</th></tr></thead>
          <tbody>
            {events.map((e) => (
              <tr key={e.seq}>
                <td><button type="button" className="link" aria-expanded={open === e.seq} onClick={() => setOpen(open === e.seq ? null : e.seq)}>{e.seq}</button></td>
                <td>{new Date(e.created_at).toLocaleString()}</td>
                <td>{e.actor_label ?? e.actor_type}</td>
                <td>{e.action}</td>
                <td>{e.target_type ? `${e.target_type} ${e.target_id ?? ""}` : "—"}</td>
                <td><span className={`badge ${e.outcome}`}>{e.outcome}</span></td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {shown ? (
        <section aria-label={`Event ${shown.seq}`}>
          <h3>Event #{shown.seq}: {shown.action}</h3>
          <pre className="log">{shown.details ? JSON.stringify(shown.details, null, 2) : "Details are read over REST: filter or reload to see them."}</pre>
        </section>
      ) : null}
    </section>
  );
}
