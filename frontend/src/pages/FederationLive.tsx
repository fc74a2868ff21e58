// One federation, live: per-site state, quorum and deadline countdown, round timeline, global
// metric curves and ε, fed by the websocket stream (REST fills what the socket missed).
import { useCallback, useEffect, useMemo, useRef, useState } from "react";

import { api, ApiError } from "../api/http";
import { Chart } from "../Chart";
import type { LiveEvent } from "../live/client";
import { eventsAfter } from "../live/rest";
import { liveClient } from "../live/useLive";
import type { Federation } from "./Federations";
import { ErrorPage, Loading } from "./Status";

export interface Site { id: number; label: string; owner: string; role: string; approval: string; active: boolean; dropped_reason: string }
export interface Slot { round: number; site: string; state: string; reason: string; wait_reason: string; loss: number | null; epsilon: number | null; seconds: number | null; eval_metrics?: Record<string, number>; error: { code?: string; message?: string } }
export interface SiteRow { site: Site; slots: Slot[] }
interface Round { number: number; kind: string; status: string; deadline: string | null; opened_at: string | null; closed_at: string | null; metrics: Record<string, number>; epsilon: number | null; participants: string[]; selected: string[] }
interface RestEvent { seq: number; kind: string; round: number | null; site: number | null; data: Record<string, unknown>; created_at: string }

export interface SiteLive { state: string; round: number | null; detail: string; loss?: number; epsilon?: number }

/** The per-site live state from a site event (the newest event of a site wins). */
export function siteState(prev: Record<number, SiteLive>, ev: LiveEvent): Record<number, SiteLive> {
  const site = ev.payload.site as number | null;
  if (ev.type !== "federation.site" || site == null) return prev;
  const data = (ev.payload.data ?? {}) as Record<string, unknown>;
  if (typeof data.state !== "string") return prev; // an approval event: no training state
  const error = data.error as { message?: string } | undefined;
  const text = (k: string) => (typeof data[k] === "string" ? (data[k] as string) : "");
  const detail = error?.message || text("reason") || text("wait_reason");
  return {
    ...prev,
    [site]: {
      state: data.state,
      round: (ev.payload.round as number | null) ?? null,
      detail,
      // The training loss; in an evaluation-only round, the base model's validation loss.
      loss: typeof data.loss === "number" ? data.loss : metric(data.metrics, "loss"),
      epsilon: typeof data.epsilon === "number" ? data.epsilon : undefined,
    },
  };
}

/** Per-site curves of one metric over rounds: the training loss, or a metric of the site's held-out
 * split ("eval:accuracy"). A site whose owner keeps its metrics private has none (left out). */
export function siteCurves(rows: SiteRow[], which: string): { x: number[]; series: { label: string; values: (number | null)[] }[] } {
  const value = (s: Slot): number | null => {
    if (which === "loss") return typeof s.loss === "number" ? s.loss : null;
    const v = s.eval_metrics?.[which.slice(5)];
    return typeof v === "number" ? v : null;
  };
  const all = [...new Set(rows.flatMap((r) => r.slots.map((s) => s.round)))].sort((a, b) => a - b);
  const lines = rows
    .map(({ site, slots }) => {
      const byRound = new Map(slots.map((s) => [s.round, value(s)]));
      return { label: site.label, values: all.map((r) => byRound.get(r) ?? null) };
    })
    .filter((s) => s.values.some((v) => v !== null));
  // Rounds where no site has the figure (round 0's statistics, a round still open) are left out.
  const keep = all.map((_, i) => lines.some((s) => s.values[i] !== null));
  return { x: all.filter((_, i) => keep[i]), series: lines.map((s) => ({ ...s, values: s.values.filter((_, i) => keep[i]) })) };
}

/** What the per-site chart can show: the loss, then every held-out metric a visible slot has. */
export function siteMetricChoices(rows: SiteRow[]): string[] {
  const keys = new Set<string>();
  for (const r of rows) for (const s of r.slots) for (const k of Object.keys(s.eval_metrics ?? {})) keys.add(k);
  return ["loss", ...[...keys].sort().map((k) => `eval:${k}`)];
}

function metric(m: unknown, k: string): number | undefined {
  const v = m && typeof m === "object" ? (m as Record<string, unknown>)[k] : undefined;
  return typeof v === "number" ? v : undefined;
}

function toLive(stream: string, e: RestEvent, prev: number): LiveEvent {
  return { type: `federation.${e.kind}`, stream, seq: e.seq, prev, time: e.created_at, payload: { round: e.round, site: e.site, data: e.data } };
}

function eventsOf(slug: string, id: number, after: number, stream: string): Promise<LiveEvent[]> {
  return eventsAfter<RestEvent>(`tenants/${slug}/federations/${id}/events/`, after, (e, prev) => toLive(stream, e, prev));
}

function useNow(ms: number): number {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    const t = setInterval(() => setNow(Date.now()), ms);
    return () => clearInterval(t);
  }, [ms]);
  return now;
}

export function FederationLive({ slug, id }: { slug: string; id: number }) {
  const stream = `tenants/${slug}/federations/${id}`;
  const [fed, setFed] = useState<Federation | null>(null);
  const [sites, setSites] = useState<SiteRow[]>([]);
  const [rounds, setRounds] = useState<Round[]>([]);
  const [live, setLive] = useState<Record<number, SiteLive>>({});
  const [timeline, setTimeline] = useState<LiveEvent[]>([]);
  const [received, setReceived] = useState(0); // every event delivered (the timeline keeps the last 500)
  const [error, setError] = useState<unknown>(null);
  const [ended, setEnded] = useState("");
  const [busy, setBusy] = useState(false);
  const [siteMetric, setSiteMetric] = useState("loss");
  const refreshTimer = useRef<ReturnType<typeof setTimeout> | null>(null);
  const now = useNow(1000);

  const refresh = useCallback(async () => {
    const [f, s, r] = await Promise.all([
      api<Federation>(`tenants/${slug}/federations/${id}/`),
      api<SiteRow[]>(`tenants/${slug}/federations/${id}/sites/`),
      api<Round[]>(`tenants/${slug}/federations/${id}/rounds/`),
    ]);
    setFed(f); setSites(s); setRounds(r);
  }, [slug, id]);

  const apply = useCallback((ev: LiveEvent) => {
    setLive((prev) => siteState(prev, ev));
    setTimeline((prev) => [...prev.slice(-499), ev]);
    setReceived((n) => n + 1);
    if (ev.type !== "federation.site") {
      // A round opened or closed, the state changed: the figures come from REST (debounced).
      if (refreshTimer.current) clearTimeout(refreshTimer.current);
      refreshTimer.current = setTimeout(() => void refresh().catch(setError), 150);
    }
  }, [refresh]);

  useEffect(() => {
    let cancelled = false;
    let unsubscribe = () => undefined as void;
    setFed(null); setLive({}); setTimeline([]); setReceived(0); setError(null); setEnded("");
    (async () => {
      await refresh();
      const history = await eventsOf(slug, id, 0, stream);
      if (cancelled) return;
      history.forEach(apply);
      const last = history.length ? history[history.length - 1].seq : 0;
      unsubscribe = liveClient().subscribe(stream, {
        onEvent: apply,
        resync: (after) => eventsOf(slug, id, after, stream),
        onEnd: (reason) => setEnded(reason === "signed_out" ? "You were signed out." : "Your access to this federation ended."),
      }, last);
    })().catch((e) => !cancelled && setError(e));
    return () => {
      cancelled = true;
      unsubscribe();
      if (refreshTimer.current) clearTimeout(refreshTimer.current);
    };
  }, [slug, id, stream, refresh, apply]);

  const chart = useMemo(() => {
    const closed = rounds.filter((r) => r.kind === "train" && r.status === "closed");
    const keys = [...new Set(closed.flatMap((r) => Object.keys(r.metrics ?? {})))].sort().slice(0, 6);
    return {
      x: closed.map((r) => r.number),
      series: keys.map((k) => ({ label: k, values: closed.map((r) => (typeof r.metrics?.[k] === "number" ? r.metrics[k] : null)) })),
      eps: closed.map((r) => r.epsilon),
    };
  }, [rounds]);

  const perSite = useMemo(() => siteCurves(sites, siteMetric), [sites, siteMetric]);
  const choices = useMemo(() => siteMetricChoices(sites), [sites]);

  if (error) return <ErrorPage error={error} />;
  if (!fed) return <Loading what="the federation" />;
  const open = rounds.find((r) => r.status === "open");
  const left = open?.deadline ? Math.max(0, Math.round((Date.parse(open.deadline) - now) / 1000)) : null;
  const submitted = open ? sites.filter((s) => live[s.site.id]?.round === open.number && live[s.site.id]?.state === "submitted").length : 0;
  const quorum = fed.spec.min_participants ?? 1;
  const eps = chart.eps.filter((e): e is number => typeof e === "number");

  async function act(what: "start" | "cancel") {
    setBusy(true);
    try {
      await api(`tenants/${slug}/federations/${id}/${what}/`, { method: "POST" });
      await refresh();
    } catch (e) {
      setError(e instanceof ApiError ? e : new Error(String(e)));
    } finally {
      setBusy(false);
    }
  }

  return (
    <section className="federation">
      <header>
        <h2>{fed.name}</h2>
        <p>
          <span className={`badge ${fed.status}`} data-testid="fed-status">{fed.status}</span>{" "}
          {fed.spec.strategy?.name ?? "fedavg"} ·{" "}
          {(fed.current_round ?? 0) > (fed.spec.rounds ?? Infinity)
            ? "final evaluation"
            : `round ${fed.current_round ?? 0} of ${fed.spec.rounds ?? "?"}`}{" "}
          · you are the {fed.side}
        </p>
        {fed.status_reason ? <p className="reason">{fed.status_reason}</p> : null}
        {fed.side === "coordinator" && fed.status === "draft" ? (
          <button type="button" disabled={busy} onClick={() => void act("start")}>Start federation</button>
        ) : null}
        {fed.side === "coordinator" && fed.status === "running" ? (
          <button type="button" disabled={busy} onClick={() => void act("cancel")}>Cancel</button>
        ) : null}
      </header>
      {ended ? <p className="error" role="alert">{ended}</p> : null}
      {open ? (
        <p className="round-now" aria-live="polite" data-testid="round-now">
          Round {open.number} ({open.kind}): {submitted} of {open.selected.length} submitted, quorum {quorum}
          {left !== null ? ` · deadline in ${left} s` : ""}
        </p>
      ) : null}

      <h3>Sites</h3>
      <table data-testid="sites">
        <thead><tr><th scope="col">Site</th><th scope="col">Owner</th><th scope="col">Role</th><th scope="col">Approval</th><th scope="col">Now</th><th scope="col">Loss</th><th scope="col">Why</th></tr></thead>
        <tbody>
          {sites.map(({ site, slots }) => {
            const l = live[site.id];
            const lastSlot = slots[slots.length - 1];
            const state = l?.state ?? lastSlot?.state ?? (site.active ? "waiting" : "dropped");
            const why = l?.detail || lastSlot?.error?.message || lastSlot?.reason || site.dropped_reason || "";
            return (
              <tr key={site.id} data-site={site.label}>
                <th scope="row">{site.label}</th>
                <td>{site.owner}</td>
                <td>{site.role}</td>
                <td>{site.approval}</td>
                <td><span className={`badge ${state}`}>{state}</span>{l?.round != null ? ` (round ${l.round})` : ""}</td>
                <td>{typeof l?.loss === "number" ? l.loss.toFixed(4) : "—"}</td>
                <td>{why}</td>
              </tr>
            );
          })}
        </tbody>
      </table>

      <h3>Global metrics</h3>
      <Chart title="Validation metrics per round (example-weighted)" x={chart.x} series={chart.series} />
      <h3>Per-site metrics</h3>
      <form className="inline" onSubmit={(e) => e.preventDefault()}>
        <label htmlFor="site-metric">Metric</label>
        <select id="site-metric" value={siteMetric} onChange={(e) => setSiteMetric(e.target.value)}>
          {choices.map((c) => <option key={c} value={c}>{c === "loss" ? "training loss" : `held-out ${c.slice(5)}`}</option>)}
        </select>
      </form>
      {perSite.series.length === 0 && sites.length > 0 ? (
        <p className="empty">No per-site figures yet{fed.side === "coordinator" ? " (or the sites' owners keep them private)" : ""}.</p>
      ) : null}
      <Chart title={`Per site: ${siteMetric === "loss" ? "training loss" : `held-out ${siteMetric.slice(5)}`}`} x={perSite.x} series={perSite.series} />
      {eps.length ? <p>ε spent so far: {eps.reduce((a, b) => a + b, 0).toFixed(3)}</p> : null}

      <h3>Rounds</h3>
      <ol className="timeline" data-testid="rounds">
        {rounds.map((r) => (
          <li key={r.number}>
            Round {r.number} · {r.kind} · {r.status}
            {r.closed_at ? ` · ${r.participants.length} participants` : ""}
            {Object.keys(r.metrics ?? {}).length ? ` · ${Object.entries(r.metrics).map(([k, v]) => `${k} ${v.toFixed(3)}`).join(", ")}` : ""}
          </li>
        ))}
      </ol>
      <details>
        <summary>Events ({received})</summary>
        <ol className="events">
          {timeline.slice(-50).map((e) => (
            <li key={e.seq}>#{e.seq} {e.type.replace("federation.", "")} {e.payload.round != null ? `r${String(e.payload.round)}` : ""} {JSON.stringify(e.payload.data)}</li>
          ))}
        </ol>
      </details>
    </section>
  );
}
