// A dataset's de-identification policy editor (starting from the PII scan's proposal) and its
// privacy budget (totals, what is spent and reserved, the ledger; the owner sets ε and δ).
import { type FormEvent, useCallback, useEffect, useState } from "react";

import { api, ApiError, type Page } from "../api/http";

export const ACTIONS = ["keep", "drop", "mask", "pseudonymise", "generalise", "redact"] as const;

export interface ColumnPolicy { action: string; params?: Record<string, unknown> }
export interface Policy { columns: Record<string, ColumnPolicy>; quasi_identifiers: string[]; k: number | null }
interface Row { action: string; params: string; qi: boolean }

/** The editor's rows from a policy (every column of the version; unlisted ones are kept). */
export function rowsOf(columns: string[], policy: Policy | null): Record<string, Row> {
  const out: Record<string, Row> = {};
  for (const c of columns) {
    const cp = policy?.columns?.[c];
    const params = cp?.params && Object.keys(cp.params).length ? JSON.stringify(cp.params) : "";
    out[c] = { action: cp?.action ?? "keep", params, qi: !!policy?.quasi_identifiers?.includes(c) };
  }
  return out;
}

/** The policy JSON from the editor's rows, or field errors (paths as the server names them). */
export function policyOf(rows: Record<string, Row>, k: string): { policy?: Policy; errors: Record<string, string[]> } {
  const errors: Record<string, string[]> = {};
  const columns: Record<string, ColumnPolicy> = {};
  for (const [name, r] of Object.entries(rows)) {
    let params: Record<string, unknown> = {};
    if (r.params.trim()) {
      try {
        const parsed: unknown = JSON.parse(r.params);
        if (!parsed || typeof parsed !== "object" || Array.isArray(parsed)) throw new Error("not an object");
        params = parsed as Record<string, unknown>;
      } catch {
        errors[`policy.columns.${name}.params`] = ['Parameters are a JSON object, e.g. {"keep_last": 4}.'];
      }
    }
    // Unlisted columns are kept: a plain keep is left out, so the stored policy says only what changes.
    if (r.action !== "keep" || Object.keys(params).length) columns[name] = { action: r.action, params };
  }
  const qis = Object.entries(rows).filter(([, r]) => r.qi).map(([n]) => n);
  let kk: number | null = null;
  if (k.trim()) {
    kk = Number(k);
    if (!Number.isInteger(kk) || kk < 2 || kk > 1000) errors["policy.k"] = ["k is a whole number from 2 to 1000, or empty for none."];
    else if (!qis.length) errors["policy.quasi_identifiers"] = ["k-anonymity needs at least one quasi-identifier."];
  }
  for (const q of qis) if (rows[q].action === "drop") errors[`policy.columns.${q}`] = [`${q} is dropped: it cannot also be a quasi-identifier.`];
  return Object.keys(errors).length ? { errors } : { policy: { columns, quasi_identifiers: qis, k: kk }, errors };
}

export function PolicyEditor({ base, versionId, versionNumber, columns, proposed, onCreated }: {
  base: string; versionId: number; versionNumber: number; columns: string[]; proposed: Policy | null;
  onCreated: (versionId: number) => void;
}) {
  const [rows, setRows] = useState<Record<string, Row>>(() => rowsOf(columns, proposed));
  const [k, setK] = useState(proposed?.k ? String(proposed.k) : "");
  const [fields, setFields] = useState<Record<string, string[]>>({});
  const [message, setMessage] = useState("");
  const [busy, setBusy] = useState(false);
  useEffect(() => { setRows(rowsOf(columns, proposed)); setK(proposed?.k ? String(proposed.k) : ""); }, [columns, proposed]);

  async function submit(e: FormEvent) {
    e.preventDefault();
    setMessage("");
    const { policy, errors } = policyOf(rows, k);
    setFields(errors);
    if (!policy) return;
    setBusy(true);
    try {
      const v = await api<{ id: number }>(`${base}versions/${versionId}/deidentify/`, { method: "POST", body: { policy } });
      onCreated(v.id);
    } catch (err) {
      if (err instanceof ApiError) { setFields(err.fields); setMessage(err.message); } else setMessage(String(err));
    } finally {
      setBusy(false);
    }
  }

  const set = (name: string, patch: Partial<Row>) => setRows((r) => ({ ...r, [name]: { ...r[name], ...patch } }));
  // The server names list items too ("policy.quasi_identifiers[0]"): shown with their field.
  const under = (key: string, prefix: string) => key === prefix || key.startsWith(`${prefix}.`) || key.startsWith(`${prefix}[`);
  const errs = (prefix: string) => Object.entries(fields).filter(([key]) => under(key, prefix))
    .map(([key, msgs]) => <p key={key} className="field-error" role="alert">{msgs.join(" ")}</p>);
  return (
    <form className="policy" onSubmit={submit} noValidate aria-labelledby="policy-title">
      <h3 id="policy-title">De-identification policy for v{versionNumber}</h3>
      <p className="help">Starts from the PII scan's proposal. Applying it creates a new de-identified version; the raw version never leaves your organisation.</p>
      <table data-testid="policy">
        <thead><tr><th scope="col">Column</th><th scope="col">Action</th><th scope="col">Parameters (JSON)</th><th scope="col">Quasi-identifier</th></tr></thead>
        <tbody>
          {Object.entries(rows).map(([name, r]) => (
            <tr key={name}>
              <th scope="row">{name}</th>
              <td>
                <select aria-label={`Action for ${name}`} value={r.action} onChange={(e) => set(name, { action: e.target.value })}
                        aria-invalid={!!fields[`policy.columns.${name}`] || !!fields[`policy.columns.${name}.action`]}>
                  {ACTIONS.map((a) => <option key={a} value={a}>{a}</option>)}
                </select>
              </td>
              <td>
                <input aria-label={`Parameters for ${name}`} value={r.params} placeholder="{}" onChange={(e) => set(name, { params: e.target.value })}
                       aria-invalid={!!fields[`policy.columns.${name}.params`]} />
                {errs(`policy.columns.${name}`)}
              </td>
              <td><input type="checkbox" aria-label={`${name} is a quasi-identifier`} checked={r.qi} onChange={(e) => set(name, { qi: e.target.checked })} /></td>
            </tr>
          ))}
        </tbody>
      </table>
      <label htmlFor="policy-k">k-anonymity over the quasi-identifiers (empty: none)</label>
      <input id="policy-k" inputMode="numeric" value={k} onChange={(e) => setK(e.target.value)} aria-invalid={!!fields["policy.k"]} />
      {errs("policy.k")}{errs("policy.quasi_identifiers")}
      {Object.entries(fields).filter(([key]) => !key.startsWith("policy.columns.") && !under(key, "policy.k") && !under(key, "policy.quasi_identifiers"))
        .map(([key, msgs]) => <p key={key} className="field-error" role="alert">{key}: {msgs.join(" ")}</p>)}
      <button type="submit" disabled={busy}>Apply policy</button>
      {message ? <p className="error" role="alert">{message}</p> : null}
    </form>
  );
}

interface Budget {
  epsilon_total: string; delta_total: string; epsilon_spent: string; delta_spent: string; epsilon_reserved: string;
  delta_reserved: string; epsilon_remaining: string; delta_remaining: string; composition: string;
}
interface Reservation { id: number; consumer: string; state: string; epsilon: string; epsilon_spent: string | null; purpose: string; reference: string; created_at: string }

const num = (s: string | null | undefined) => (s == null ? "—" : Number(s).toLocaleString(undefined, { maximumFractionDigits: 6 }));

export function BudgetPanel({ base, role }: { base: string; role: string }) {
  const [budget, setBudget] = useState<Budget | null>(null);
  const [ledger, setLedger] = useState<Reservation[]>([]);
  const [hidden, setHidden] = useState("");
  const [eps, setEps] = useState("");
  const [delta, setDelta] = useState("");
  const [fields, setFields] = useState<Record<string, string[]>>({});
  const [message, setMessage] = useState("");
  const load = useCallback(async () => {
    try {
      const [b, r] = await Promise.all([api<Budget>(`${base}budget/`), api<Page<Reservation>>(`${base}budget/reservations/?page_size=50`)]);
      setBudget(b); setLedger(r.results); setEps(String(Number(b.epsilon_total))); setDelta(String(Number(b.delta_total)));
    } catch (err) {
      setHidden(err instanceof ApiError && err.status === 403 ? "Your role does not show the privacy budget." : err instanceof Error ? err.message : String(err));
    }
  }, [base]);
  useEffect(() => { void load(); }, [load]);

  async function save(e: FormEvent) {
    e.preventDefault();
    setMessage("");
    const errs: Record<string, string[]> = {};
    const en = Number(eps), dn = Number(delta);
    if (!eps.trim() || !Number.isFinite(en) || en <= 0 || en > 1000) errs.epsilon = ["ε is a number above 0, at most 1000."];
    if (!delta.trim() || !Number.isFinite(dn) || dn < 0 || dn > 0.01) errs.delta = ["δ is a number from 0 to 0.01."];
    setFields(errs);
    if (Object.keys(errs).length) return;
    try {
      setBudget(await api<Budget>(`${base}budget/`, { method: "PUT", body: { epsilon: eps.trim(), delta: delta.trim() } }));
      setMessage("Saved.");
    } catch (err) {
      if (err instanceof ApiError) { setFields(err.fields); setMessage(err.message); } else setMessage(String(err));
    }
  }

  if (hidden) return <p className="empty">{hidden}</p>;
  if (!budget) return <p className="loading">Loading the privacy budget…</p>;
  const total = Number(budget.epsilon_total) || 1;
  return (
    <section className="budget" aria-labelledby="budget-title">
      <h3 id="budget-title">Privacy budget</h3>
      <p data-testid="budget-summary">
        ε {num(budget.epsilon_spent)} spent + {num(budget.epsilon_reserved)} reserved of {num(budget.epsilon_total)} ·{" "}
        {num(budget.epsilon_remaining)} left · δ {num(budget.delta_total)} ({budget.composition} composition)
      </p>
      <meter min={0} max={total} value={Number(budget.epsilon_spent) + Number(budget.epsilon_reserved)} aria-label="Privacy budget used (ε)" />
      {role === "owner" ? (
        <form className="inline" onSubmit={save} noValidate>
          <label htmlFor="budget-eps">Total ε</label>
          <input id="budget-eps" inputMode="decimal" value={eps} onChange={(e) => setEps(e.target.value)} aria-invalid={!!fields.epsilon} />
          <label htmlFor="budget-delta">Total δ</label>
          <input id="budget-delta" inputMode="decimal" value={delta} onChange={(e) => setDelta(e.target.value)} aria-invalid={!!fields.delta} />
          <button type="submit">Set budget</button>
          {fields.epsilon ? <p className="field-error" role="alert">{fields.epsilon.join(" ")}</p> : null}
          {fields.delta ? <p className="field-error" role="alert">{fields.delta.join(" ")}</p> : null}
          {message ? <p className={message === "Saved." ? "ok" : "error"} role="status">{message}</p> : null}
        </form>
      ) : null}
      {ledger.length === 0 ? <p className="empty">No reservations yet: a DP job or federation reserves ε here when it starts.</p> : (
        <table data-testid="budget-ledger">
          <caption className="sr-only">Reservations against this budget</caption>
          <thead><tr><th scope="col">By</th><th scope="col">Purpose</th><th scope="col">State</th><th scope="col">ε reserved</th><th scope="col">ε spent</th><th scope="col">When</th></tr></thead>
          <tbody>
            {ledger.map((r) => (
              <tr key={r.id}><td>{r.consumer}</td><td>{r.purpose}{r.reference ? ` (${r.reference})` : ""}</td><td>{r.state}</td>
                <td>{num(r.epsilon)}</td><td>{num(r.epsilon_spent)}</td><td>{new Date(r.created_at).toLocaleString()}</td></tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}
