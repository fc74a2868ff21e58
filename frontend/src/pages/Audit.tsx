// The audit log, for owners, admins and auditors: filter (action, outcome, actor, a time range), live
// (the activity stream), page back through older events (the API's cursor, 100 at a time), verify the
// hash chain, export. Another role gets the API's 403, shown as "No access".
import { type FormEvent, useEffect, useRef, useState } from "react";

import { api, ApiError, type Page, pagePath } from "../api/http";
import type { LiveEvent } from "../live/client";
import { liveClient } from "../live/useLive";
import { isoOfLocal } from "../time";
import { ErrorPage, Loading } from "./Status";

interface AuditEvent {
  seq: number; created_at: string; actor_type: string; actor_label: string | null; action: string;
  target_type: string | null; target_id: string | null; outcome: string; details?: Record<string, unknown>;
}
interface Verify { ok: boolean; num_events: number; problems: { seq: number; kind: string; message: string }[] }
/** The list's filters as the API takes them: `since` (inclusive) and `until` (exclusive) are ISO 8601. */
export interface AuditFilters { action_prefix: string; outcome: string; actor_type: string; since?: string; until?: string }
/** The filter form: `from` and `to` are `datetime-local` values (local time). */
interface FilterForm { action_prefix: string; outcome: string; actor_type: string; from: string; to: string }
type Fields = Record<string, string[]>;

/** The list and export query of the filters (empty ones left out). */
export function auditQuery(f: AuditFilters, extra: Record<string, string> = {}): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries({ ...f, ...extra })) if (v) q.set(k, v);
  return q.toString();
}

/** The form's filters for the API, or the field errors (under `since` and `until`, the API's names). */
export function auditFilters(form: FilterForm): { filters?: AuditFilters; errors: Fields } {
  const errors: Fields = {};
  const since = form.from ? isoOfLocal(form.from) : null;
  const until = form.to ? isoOfLocal(form.to) : null;
  if (form.from && !since) errors.since = ["Enter a date and time, or leave it empty."];
  if (form.to && !until) errors.until = ["Enter a date and time, or leave it empty."];
  if (since && until && since >= until) errors.until = ["The end must be after the start."];
  if (form.action_prefix.trim().length > 100) errors.action_prefix = ["At most 100 characters."];
  if (Object.keys(errors).length) return { errors };
  return { errors, filters: { action_prefix: form.action_prefix.trim(), outcome: form.outcome, actor_type: form.actor_type,
    ...(since ? { since } : {}), ...(until ? { until } : {}) } };
}

const EMPTY: AuditFilters = { action_prefix: "", outcome: "", actor_type: "" };
const EMPTY_FORM: FilterForm = { action_prefix: "", outcome: "", actor_type: "", from: "", to: "" };
const PAGE = 100;
/** The most events the page holds (live ones included); past it, narrow the filters or export. */
export const MAX_SHOWN = 5000;
const FORM_FIELDS = ["action_prefix", "outcome", "actor_type", "since", "until"];

export function Audit({ slug }: { slug: string }) {
  const [events, setEvents] = useState<AuditEvent[] | null>(null);
  const [next, setNext] = useState<string | null>(null);
  const [form, setForm] = useState<FilterForm>(EMPTY_FORM);
  const [applied, setApplied] = useState<AuditFilters>(EMPTY);
  const [fields, setFields] = useState<Fields>({});
  const [refusal, setRefusal] = useState("");
  const [open, setOpen] = useState<number | null>(null);
  const [verify, setVerify] = useState<Verify | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const [older, setOlder] = useState<"idle" | "loading" | string>("idle");
  const generation = useRef(0); // a newer filter makes pages still in flight stale

  useEffect(() => {
    const gen = ++generation.current;
    setEvents(null);
    setNext(null);
    setOlder("idle");
    setRefusal("");
    api<Page<AuditEvent>>(`tenants/${slug}/audit-events/?${auditQuery(applied, { page_size: String(PAGE) })}`).then((page) => {
      if (gen !== generation.current) return;
      setEvents(page.results);
      setNext(page.next ?? null);
    }, (e: unknown) => {
      if (gen !== generation.current) return;
      if (e instanceof ApiError && e.status === 400) {
        // A filter the server refuses: its field errors go under the filters, the page stays.
        setFields(e.fields);
        setRefusal(e.message);
        setEvents([]);
      } else setError(e);
    });
  }, [slug, applied]);

  useEffect(() => {
    // New events as they are written (summaries; the details are read over REST).
    const since = applied.since ? Date.parse(applied.since) : null;
    const until = applied.until ? Date.parse(applied.until) : null;
    const unsubscribe = liveClient().subscribe(`tenants/${slug}/activity`, {
      onEvent: (ev: LiveEvent) => {
        const p = ev.payload as Omit<AuditEvent, "seq" | "created_at">;
        const t = Date.parse(ev.time);
        const matches = (!applied.action_prefix || p.action.startsWith(applied.action_prefix))
          && (!applied.outcome || p.outcome === applied.outcome) && (!applied.actor_type || p.actor_type === applied.actor_type)
          && (since === null || t >= since) && (until === null || t < until);
        if (matches) setEvents((old) => (old && !old.some((e) => e.seq === ev.seq) ? [{ ...p, seq: ev.seq, created_at: ev.time }, ...old] : old));
      },
    });
    return unsubscribe;
  }, [slug, applied]);

  useEffect(() => {
    // Bounded: past MAX_SHOWN the oldest rows go, and with them the next page (it would leave a gap).
    if (events && events.length > MAX_SHOWN) {
      setEvents(events.slice(0, MAX_SHOWN));
      setNext(null);
    }
  }, [events]);

  async function loadOlder() {
    if (!next) return;
    const gen = generation.current;
    setOlder("loading");
    try {
      const page = await api<Page<AuditEvent>>(pagePath(next));
      if (gen !== generation.current) return;
      setEvents((old) => {
        const seen = new Set((old ?? []).map((e) => e.seq));
        return [...(old ?? []), ...page.results.filter((e) => !seen.has(e.seq))];
      });
      setNext(page.next ?? null);
      setOlder("idle");
    } catch (e) {
      if (gen === generation.current) setOlder(`The older events cannot load: ${e instanceof Error ? e.message : String(e)}`);
    }
  }

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
    const { filters, errors } = auditFilters(form);
    setFields(errors);
    if (filters) setApplied(filters);
  }

  if (error) return <ErrorPage error={error} />;
  const shown = events?.find((e) => e.seq === open);
  const errId = (k: string) => `audit-error-${k}`;
  const err = (k: string) => (fields[k] ? <p key={k} id={errId(k)} className="field-error" role="alert">{fields[k].join(" ")}</p> : null);
  const described = (k: string, help?: string) => ({
    "aria-invalid": !!fields[k],
    "aria-describedby": [help, fields[k] ? errId(k) : undefined].filter(Boolean).join(" ") || undefined,
  });
  return (
    <section className="audit">
      <h2>Audit log</h2>
      <form className="inline" onSubmit={apply} noValidate>
        <label htmlFor="a-action">Action starts with</label>
        <input id="a-action" value={form.action_prefix} onChange={(e) => setForm({ ...form, action_prefix: e.target.value })} {...described("action_prefix")} />
        <label htmlFor="a-outcome">Outcome</label>
        <select id="a-outcome" value={form.outcome} onChange={(e) => setForm({ ...form, outcome: e.target.value })} {...described("outcome")}>
          <option value="">any</option><option value="success">success</option><option value="denied">denied</option><option value="error">error</option>
        </select>
        <label htmlFor="a-actor">Actor</label>
        <select id="a-actor" value={form.actor_type} onChange={(e) => setForm({ ...form, actor_type: e.target.value })} {...described("actor_type")}>
          <option value="">any</option><option value="user">user</option><option value="api_key">API key</option>
          <option value="system">system</option><option value="anonymous">anonymous</option>
        </select>
        <span className="pair">
          <label htmlFor="a-from">From</label>
          <input id="a-from" type="datetime-local" value={form.from} onChange={(e) => setForm({ ...form, from: e.target.value })} {...described("since", "a-time-help")} />
        </span>
        <span className="pair">
          <label htmlFor="a-to">To</label>
          <input id="a-to" type="datetime-local" value={form.to} onChange={(e) => setForm({ ...form, to: e.target.value })} {...described("until", "a-time-help")} />
        </span>
        <button type="submit">Filter</button>
        <p id="a-time-help" className="help">Your local time. From is included, To is not; leave either empty for no limit.</p>
        {FORM_FIELDS.map((k) => err(k))}
        {Object.entries(fields).filter(([k]) => !FORM_FIELDS.includes(k)).map(([k, msgs]) => <p key={k} className="field-error" role="alert">{k}: {msgs.join(" ")}</p>)}
        {refusal ? <p className="error" role="alert">{refusal}</p> : null}
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
      {!events ? <Loading what="audit events" /> : refusal ? null : events.length === 0 ? <p className="empty">No events match.</p> : (
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
      {events && events.length > 0 ? (
        <p className="actions" data-testid="audit-paging">
          {events.length} events shown, newest first.{" "}
          {next && events.length < MAX_SHOWN ? (
            <button type="button" disabled={older === "loading"} onClick={() => void loadOlder()}>
              {older === "loading" ? "Loading older events…" : `Load older events (${PAGE} more)`}
            </button>
          ) : next || events.length >= MAX_SHOWN ? (
            `The page holds at most ${MAX_SHOWN} events: narrow the filters, or export, to see older ones.`
          ) : "No older events match."}
        </p>
      ) : null}
      {older !== "idle" && older !== "loading" ? <p className="error" role="alert">{older}</p> : null}
      {shown ? (
        <section aria-label={`Event ${shown.seq}`}>
          <h3>Event #{shown.seq}: {shown.action}</h3>
          <pre className="log">{shown.details ? JSON.stringify(shown.details, null, 2) : "Details are read over REST: filter or reload to see them."}</pre>
        </section>
      ) : null}
    </section>
  );
}
