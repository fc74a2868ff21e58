// Datasets: the list (and a new one), and one dataset: upload a version with a real progress bar,
// its processing live over the websocket, the validation and PII reports, the de-identification
// policy editor, the privacy budget, and its grants.
import { type FormEvent, useCallback, useEffect, useMemo, useState } from "react";

import { api, ApiError, type Page, upload } from "../api/http";
import { liveClient } from "../live/useLive";
import { BudgetPanel, type Policy, PolicyEditor } from "./DatasetPolicy";
import { navigate } from "../router";
import { ErrorPage, Loading } from "./Status";

interface Dataset { id: number; name: string; description: string; status: string; created_at: string }
interface Column { name: string; type: string; nulls?: number; null_ratio?: number; distinct?: number; min?: unknown; max?: unknown }
/** A column's share of nulls: a raw version's report gives the ratio, a de-identified one the count. */
export function nullShare(c: { nulls?: number; null_ratio?: number }, rows: number): string {
  const r = typeof c.null_ratio === "number" ? c.null_ratio : typeof c.nulls === "number" && rows > 0 ? c.nulls / rows : null;
  return r === null ? "—" : `${(r * 100).toFixed(1)}%`;
}

interface Validation {
  format?: string; rows?: number; columns_count?: number; columns?: Column[]; label?: string | null; task?: string | null;
  class_balance?: Record<string, number> | null; row_errors?: { count?: number; first?: { line?: number; message?: string }[] };
}
interface Version {
  id: number; number: number; kind: string; status: string; format: string; original_filename: string; rows: number;
  validation: Validation; error: { code?: string; message?: string; details?: Record<string, unknown> }; created_at: string;
}
interface Grant { id: number; grantee: string; permission: string; status: string; expires_at: string | null }
interface PiiColumn { detections: Record<string, number>; dominant_kind: string | null; proposed: { action?: string }; masked_examples: Record<string, string[]> }

function FieldErrors({ errors, name }: { errors: Record<string, string[]>; name: string }) {
  return errors[name] ? <p className="field-error" role="alert">{errors[name].join(" ")}</p> : null;
}

export function Datasets({ slug }: { slug: string }) {
  const [items, setItems] = useState<Dataset[] | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [name, setName] = useState("");
  const [fields, setFields] = useState<Record<string, string[]>>({});
  const [message, setMessage] = useState("");
  const load = useCallback(() => api<Page<Dataset>>(`tenants/${slug}/datasets/?page_size=100`).then((p) => setItems(p.results), setError), [slug]);
  useEffect(() => { setItems(null); void load(); }, [load]);

  async function create(e: FormEvent) {
    e.preventDefault();
    setMessage("");
    if (!name.trim()) { setFields({ name: ["Name the dataset."] }); return; }
    setFields({});
    try {
      const ds = await api<Dataset>(`tenants/${slug}/datasets/`, { method: "POST", body: { name: name.trim() } });
      navigate(`/app/t/${slug}/datasets/${ds.id}`);
    } catch (err) {
      if (err instanceof ApiError) { setFields(err.fields); setMessage(err.message); } else setMessage(String(err));
    }
  }

  if (error) return <ErrorPage error={error} />;
  if (!items) return <Loading what="datasets" />;
  return (
    <section>
      <h2>Datasets</h2>
      <form className="inline" onSubmit={create} noValidate>
        <label htmlFor="ds-name">New dataset</label>
        <input id="ds-name" value={name} onChange={(e) => setName(e.target.value)} aria-invalid={!!fields.name} />
        <button type="submit">Create</button>
        <FieldErrors errors={fields} name="name" />
        {message ? <p className="error" role="alert">{message}</p> : null}
      </form>
      {items.length === 0 ? <p className="empty">No datasets yet: create one, then upload a file.</p> : (
        <table>
          <caption className="sr-only">Datasets of this organisation</caption>
          <thead><tr><th scope="col">Name</th><th scope="col">Status</th><th scope="col">Created</th></tr></thead>
          <tbody>
            {items.map((d) => (
              <tr key={d.id}>
                <td><a href={`/app/t/${slug}/datasets/${d.id}`} onClick={(e) => { e.preventDefault(); navigate(`/app/t/${slug}/datasets/${d.id}`); }}>{d.name}</a></td>
                <td><span className={`badge ${d.status}`}>{d.status}</span></td>
                <td>{new Date(d.created_at).toLocaleString()}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

export function DatasetPage({ slug, id, role = "" }: { slug: string; id: number; role?: string }) {
  const base = `tenants/${slug}/datasets/${id}/`;
  const [ds, setDs] = useState<Dataset | null>(null);
  const [versions, setVersions] = useState<Version[]>([]);
  const [grants, setGrants] = useState<Grant[]>([]);
  const [selected, setSelected] = useState<number | null>(null);
  const [pii, setPii] = useState<Record<string, PiiColumn> | null>(null);
  const [proposed, setProposed] = useState<Policy | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [file, setFile] = useState<File | null>(null);
  const [label, setLabel] = useState("");
  const [progress, setProgress] = useState<number | null>(null);
  const [uploadError, setUploadError] = useState<ApiError | null>(null);
  const [grantee, setGrantee] = useState("");
  const [permission, setPermission] = useState("process");
  const [grantErrors, setGrantErrors] = useState<Record<string, string[]>>({});
  const [grantMessage, setGrantMessage] = useState("");

  const refresh = useCallback(async () => {
    const [d, v, g] = await Promise.all([
      api<Dataset>(base), api<Page<Version>>(`${base}versions/?page_size=100`), api<Page<Grant>>(`${base}grants/?page_size=100`),
    ]);
    setDs(d); setVersions(v.results); setGrants(g.results);
    setSelected((s) => s ?? v.results[0]?.id ?? null);
  }, [base]);

  useEffect(() => {
    let unsubscribe = () => undefined as void;
    refresh().then(() => {
      // Versions processed, de-identified, failed; grants given or revoked: live.
      unsubscribe = liveClient().subscribe(`tenants/${slug}/datasets/${id}`, { onEvent: () => void refresh().catch(setError) });
    }, setError);
    return () => unsubscribe();
  }, [slug, id, refresh]);

  const version = versions.find((v) => v.id === selected) ?? null;
  useEffect(() => {
    setPii(null);
    setProposed(null);
    if (version && version.kind === "raw" && version.status === "ready") {
      api<{ report: { columns?: Record<string, PiiColumn>; proposed_policy?: Policy } }>(`${base}versions/${version.id}/pii-report/`)
        .then((r) => { setPii(r.report?.columns ?? {}); setProposed(r.report?.proposed_policy ?? { columns: {}, quasi_identifiers: [], k: null }); },
          () => setPii({}));
    }
  }, [base, version?.id, version?.status]); // eslint-disable-line react-hooks/exhaustive-deps

  async function send(e: FormEvent) {
    e.preventDefault();
    setUploadError(null);
    if (!file) { setUploadError(new ApiError(400, "invalid", "Choose a file.", { file: ["Choose a file."] })); return; }
    const form = new FormData();
    form.append("file", file);
    if (label.trim()) form.append("label", label.trim());
    setProgress(0);
    try {
      const r = await upload<Version>(`${base}versions/`, form, (sent, total) => setProgress(total ? sent / total : 0));
      setSelected(r.body.id);
      await refresh();
    } catch (err) {
      setUploadError(err instanceof ApiError ? err : new ApiError(0, "error", String(err)));
    } finally {
      setProgress(null);
    }
  }

  async function grant(e: FormEvent) {
    e.preventDefault();
    setGrantMessage("");
    if (!/^[a-z0-9][a-z0-9-]*$/.test(grantee)) { setGrantErrors({ grantee: ["Enter the other organisation's slug."] }); return; }
    setGrantErrors({});
    try {
      await api(`${base}grants/`, { method: "POST", body: { grantee, permission } });
      setGrantee("");
      await refresh();
    } catch (err) {
      if (err instanceof ApiError) { setGrantErrors(err.fields); setGrantMessage(err.message); } else setGrantMessage(String(err));
    }
  }

  async function revoke(g: Grant) {
    try { await api(`${base}grants/${g.id}/`, { method: "DELETE" }); await refresh(); } catch (err) { setGrantMessage(err instanceof Error ? err.message : String(err)); }
  }

  const columnNames = useMemo(() => (version?.validation?.columns ?? []).map((c) => c.name), [version?.id, version?.status]); // eslint-disable-line react-hooks/exhaustive-deps

  if (error) return <ErrorPage error={error} />;
  if (!ds) return <Loading what="the dataset" />;
  const v = version?.validation ?? {};
  const canDeidentify = (role === "owner" || role === "admin") && version?.kind === "raw" && version.status === "ready" && proposed !== null;
  return (
    <section className="dataset">
      <h2>{ds.name}</h2>
      <form onSubmit={send} noValidate className="upload">
        <h3>Upload a version</h3>
        <label htmlFor="file">File (CSV, TSV, Parquet, JSON Lines, or a zip of images)</label>
        <input id="file" type="file" onChange={(e) => setFile(e.target.files?.[0] ?? null)} aria-invalid={!!uploadError?.fields.file} />
        <label htmlFor="label">Label column (optional)</label>
        <input id="label" value={label} onChange={(e) => setLabel(e.target.value)} />
        <button type="submit" disabled={progress !== null}>Upload</button>
        {progress !== null ? (
          <p><progress value={progress} max={1} aria-label="Upload progress" data-testid="upload-progress" /> {Math.round(progress * 100)}%</p>
        ) : null}
        {uploadError ? (
          <div className="error" role="alert">
            <p>{uploadError.message}</p>
            {Object.entries(uploadError.fields).map(([k, msgs]) => <p key={k}>{k}: {msgs.join(" ")}</p>)}
          </div>
        ) : null}
      </form>

      <h3>Versions</h3>
      {versions.length === 0 ? <p className="empty">No versions yet: upload a file.</p> : (
        <table data-testid="versions">
          <thead><tr><th scope="col">Version</th><th scope="col">Kind</th><th scope="col">Status</th><th scope="col">Rows</th><th scope="col">File</th><th scope="col"></th></tr></thead>
          <tbody>
            {versions.map((ver) => (
              <tr key={ver.id} aria-selected={ver.id === selected}>
                <td>v{ver.number}</td><td>{ver.kind}</td><td><span className={`badge ${ver.status}`}>{ver.status}</span></td>
                <td>{ver.status === "ready" ? ver.rows : "—"}</td><td>{ver.original_filename}</td>
                <td><button type="button" onClick={() => setSelected(ver.id)}>Reports</button></td>
              </tr>
            ))}
          </tbody>
        </table>
      )}

      {version ? (
        <section className="reports" aria-label={`Reports of version ${version.number}`}>
          <h3>Validation report: v{version.number}</h3>
          {version.status === "failed" ? <p className="error" role="alert">{version.error?.code}: {version.error?.message}</p> : null}
          {version.status === "processing" ? <p className="loading">Processing on a worker…</p> : null}
          {version.status === "ready" ? (
            <>
              <p data-testid="validation-summary">{v.rows ?? version.rows} rows · {v.columns_count ?? v.columns?.length ?? 0} columns · {v.format ?? version.format}
                {v.label ? ` · label ${v.label} (${v.task ?? "task?"})` : ""}
                {v.row_errors?.count ? ` · ${v.row_errors.count} row errors` : ""}</p>
              {v.class_balance ? <p>Classes: {Object.entries(v.class_balance).map(([k, n]) => `${k}: ${n}`).join(", ")}</p> : null}
              {v.columns?.length ? (
                <table>
                  <thead><tr><th scope="col">Column</th><th scope="col">Type</th><th scope="col">Nulls</th><th scope="col">Distinct</th><th scope="col">Min</th><th scope="col">Max</th><th scope="col">PII found</th></tr></thead>
                  <tbody>
                    {v.columns.slice(0, 200).map((c) => {
                      const p = pii?.[c.name];
                      const found = p ? Object.entries(p.detections ?? {}).filter(([, n]) => n > 0).map(([k]) => k).join(", ") : "";
                      return (
                        <tr key={c.name}>
                          <th scope="row">{c.name}</th><td>{c.type}</td><td>{nullShare(c, v.rows ?? version.rows)}</td><td>{c.distinct ?? "—"}</td>
                          <td>{c.min == null ? "—" : String(c.min)}</td><td>{c.max == null ? "—" : String(c.max)}</td>
                          <td>{found ? `${found} → ${p?.proposed?.action ?? "review"}` : pii ? "none" : "—"}</td>
                        </tr>
                      );
                    })}
                  </tbody>
                </table>
              ) : null}
            </>
          ) : null}
        </section>
      ) : null}

      {canDeidentify && version ? (
        <PolicyEditor base={base} versionId={version.id} versionNumber={version.number} columns={columnNames} proposed={proposed}
                      onCreated={(vid) => { setSelected(vid); void refresh().catch(setError); }} />
      ) : null}

      <BudgetPanel key={base} base={base} role={role} />

      <h3>Grants</h3>
      {grants.length === 0 ? <p className="empty">Not shared with any organisation.</p> : (
        <table data-testid="grants">
          <thead><tr><th scope="col">Organisation</th><th scope="col">Permission</th><th scope="col">Status</th><th scope="col"></th></tr></thead>
          <tbody>
            {grants.map((g) => (
              <tr key={g.id}><td>{g.grantee}</td><td>{g.permission}</td><td>{g.status}</td>
                <td>{g.status === "active" ? <button type="button" onClick={() => void revoke(g)}>Revoke</button> : null}</td></tr>
            ))}
          </tbody>
        </table>
      )}
      <form className="inline" onSubmit={grant} noValidate>
        <label htmlFor="grantee">Share with (organisation slug)</label>
        <input id="grantee" value={grantee} onChange={(e) => setGrantee(e.target.value)} aria-invalid={!!grantErrors.grantee} />
        <label htmlFor="permission">Permission</label>
        <select id="permission" value={permission} onChange={(e) => setPermission(e.target.value)}>
          <option value="process">process (train on it, never read it)</option>
          <option value="federate">federate (federations only)</option>
          <option value="download">download (read the de-identified version)</option>
        </select>
        <button type="submit">Grant</button>
        <FieldErrors errors={grantErrors} name="grantee" />
        <FieldErrors errors={grantErrors} name="permission" />
        {grantMessage ? <p className="error" role="alert">{grantMessage}</p> : null}
      </form>
    </section>
  );
}
