// The model registry: every version a job or a federation registered, and one version's metrics,
// lineage (the job or federation, every dataset version with its content hash), spec, weights
// download and exports (TorchScript, ONNX). Downloads are plain links: the session cookie
// authorises them and the server audits each one.
import { useEffect, useState } from "react";

import { api, type Page } from "../api/http";
import { navigate } from "../router";
import { ErrorPage, Loading } from "./Status";

interface LineageDataset {
  site?: string; role?: string; dataset_id?: number; dataset_owner_tenant_id?: number; dataset_version_id?: number;
  dataset_content_sha256?: string; rounds_trained?: number; epsilon?: number | null;
}

export interface ModelVersion {
  id: number;
  name: string;
  version: number;
  source: string;
  job: number | null;
  federation: number | null;
  spec: { model?: { name?: string; params?: Record<string, unknown> }; epochs?: number; optimizer?: { name?: string; lr?: number } };
  metrics: Record<string, number>;
  lineage: {
    dataset_id?: number; dataset_version_id?: number; dataset_owner_tenant_id?: number; dataset_content_sha256?: string;
    job_id?: number; spec_hash?: string; federation_id?: number; strategy?: string; round?: number; rounds?: number;
    model_digest?: string; metrics_on?: string; datasets?: LineageDataset[]; code_version?: string; torch_version?: string;
    simulation?: { split?: Record<string, unknown> };
  };
  input_info: { kind?: string; problem?: string; n_features?: number; n_outputs?: number };
  sha256: string;
  size_bytes: number;
  exportable?: boolean;
  created_at: string;
}

const CAN_DOWNLOAD = new Set(["owner", "admin", "analyst", "integrator"]);

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function metricText(m: Record<string, number>): string {
  const keys = Object.keys(m).sort();
  return keys.length ? keys.slice(0, 4).map((k) => `${k} ${typeof m[k] === "number" ? m[k].toFixed(3) : String(m[k])}`).join(" · ") : "—";
}

function Link({ to, children }: { to: string; children: React.ReactNode }) {
  return <a href={to} onClick={(e) => { e.preventDefault(); navigate(to); }}>{children}</a>;
}

export function Models({ slug }: { slug: string }) {
  const [items, setItems] = useState<ModelVersion[] | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [filter, setFilter] = useState("");
  useEffect(() => {
    setItems(null);
    api<Page<ModelVersion>>(`tenants/${slug}/models/?page_size=100`).then((p) => setItems(p.results), setError);
  }, [slug]);
  if (error) return <ErrorPage error={error} />;
  if (!items) return <Loading what="models" />;
  const shown = items.filter((m) => !filter || m.name.toLowerCase().includes(filter.toLowerCase()));
  return (
    <section>
      <h2>Models</h2>
      {items.length === 0 ? (
        <p className="empty">No models yet. A training job or a federation registers its model here when it finishes.</p>
      ) : (
        <>
          <form className="inline" role="search" onSubmit={(e) => e.preventDefault()}>
            <label htmlFor="model-filter">Filter by name</label>
            <input id="model-filter" type="search" value={filter} onChange={(e) => setFilter(e.target.value)} />
          </form>
          {shown.length === 0 ? <p className="empty">No model matches “{filter}”.</p> : (
            <table data-testid="models">
              <caption className="sr-only">Model versions of this organisation</caption>
              <thead><tr><th scope="col">Name</th><th scope="col">Version</th><th scope="col">From</th><th scope="col">Architecture</th><th scope="col">Metrics</th><th scope="col">Registered</th></tr></thead>
              <tbody>
                {shown.map((m) => (
                  <tr key={m.id}>
                    <td><Link to={`/app/t/${slug}/models/${m.id}`}>{m.name}</Link></td>
                    <td>v{m.version}</td>
                    <td>{m.federation ? `federation #${m.federation}` : m.job ? `job #${m.job}` : m.source}</td>
                    <td>{m.spec.model?.name ?? "—"}</td>
                    <td>{metricText(m.metrics)}</td>
                    <td>{new Date(m.created_at).toLocaleString()}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          )}
        </>
      )}
    </section>
  );
}

export function ModelPage({ slug, id, role }: { slug: string; id: number; role: string }) {
  const [m, setM] = useState<ModelVersion | null>(null);
  const [versions, setVersions] = useState<ModelVersion[]>([]);
  const [error, setError] = useState<unknown>(null);
  useEffect(() => {
    setM(null);
    api<ModelVersion>(`tenants/${slug}/models/${id}/`).then((mv) => {
      setM(mv);
      // The other versions under the same name, newest first.
      return api<Page<ModelVersion>>(`tenants/${slug}/models/?name=${encodeURIComponent(mv.name)}&page_size=100`)
        .then((p) => setVersions(p.results.filter((v) => v.name === mv.name)));
    }).catch(setError);
  }, [slug, id]);
  if (error) return <ErrorPage error={error} />;
  if (!m) return <Loading what="the model" />;
  const base = `/api/v1/tenants/${slug}/models/${m.id}/`;
  const l = m.lineage ?? {};
  const datasets: LineageDataset[] = l.datasets ?? (l.dataset_version_id ? [{
    dataset_id: l.dataset_id, dataset_version_id: l.dataset_version_id, dataset_owner_tenant_id: l.dataset_owner_tenant_id,
    dataset_content_sha256: l.dataset_content_sha256,
  }] : []);
  const metrics = Object.entries(m.metrics ?? {}).sort(([a], [b]) => a.localeCompare(b));
  return (
    <section className="model">
      <header>
        <h2>{m.name} <span className="badge">v{m.version}</span></h2>
        <p>
          {m.spec.model?.name ?? "model"} · {m.input_info?.kind ?? "tabular"} {m.input_info?.problem ?? ""} ·{" "}
          {formatBytes(m.size_bytes)} · registered {new Date(m.created_at).toLocaleString()}
        </p>
      </header>

      <h3>Metrics</h3>
      {metrics.length === 0 ? <p className="empty">No metrics were recorded for this version.</p> : (
        <table data-testid="model-metrics">
          <caption className="sr-only">Metrics of version {m.version}{l.metrics_on ? `, measured on ${l.metrics_on}` : ""}</caption>
          <tbody>{metrics.map(([k, v]) => <tr key={k}><th scope="row">{k}</th><td>{typeof v === "number" ? v.toFixed(4) : String(v)}</td></tr>)}</tbody>
        </table>
      )}
      {l.metrics_on ? <p className="empty">Measured on {l.metrics_on === "central" ? "the coordinator's central set" : "the sites' held-out splits (example-weighted)"}.</p> : null}

      <h3>Lineage</h3>
      <dl className="lineage" data-testid="lineage">
        {m.federation ? <><dt>Federation</dt><dd><Link to={`/app/t/${slug}/federations/${m.federation}`}>#{m.federation}</Link>{l.round != null ? `, round ${l.round} of ${l.rounds ?? "?"}` : ""}{l.strategy ? ` (${l.strategy})` : ""}</dd></> : null}
        {m.job ? <><dt>Training job</dt><dd><Link to={`/app/t/${slug}/jobs/${m.job}`}>#{m.job}</Link>{l.simulation ? " (a simulation of a federation)" : ""}</dd></> : null}
        {l.spec_hash ? <><dt>Spec hash</dt><dd><code>{l.spec_hash}</code></dd></> : null}
        {l.model_digest ? <><dt>Model digest</dt><dd><code>{l.model_digest}</code></dd></> : null}
        <dt>Weights SHA-256</dt><dd><code>{m.sha256}</code></dd>
        {l.code_version ? <><dt>Code</dt><dd>{l.code_version}{l.torch_version ? ` · torch ${l.torch_version}` : ""}</dd></> : null}
      </dl>
      {datasets.length ? (
        <table data-testid="lineage-datasets">
          <caption>Trained on</caption>
          <thead><tr><th scope="col">Site</th><th scope="col">Dataset</th><th scope="col">Version</th><th scope="col">Owner</th><th scope="col">Content SHA-256</th><th scope="col">Rounds</th><th scope="col">ε</th></tr></thead>
          <tbody>
            {datasets.map((d, i) => (
              <tr key={`${d.dataset_version_id}-${i}`}>
                <td>{d.site ?? "—"}{d.role && d.role !== "train" ? ` (${d.role})` : ""}</td>
                <td>#{d.dataset_id ?? "?"}</td>
                <td>#{d.dataset_version_id ?? "?"}</td>
                <td>organisation #{d.dataset_owner_tenant_id ?? "?"}</td>
                <td><code title={d.dataset_content_sha256}>{(d.dataset_content_sha256 ?? "").slice(0, 16)}…</code></td>
                <td>{d.rounds_trained ?? "—"}</td>
                <td>{typeof d.epsilon === "number" ? d.epsilon.toFixed(3) : "—"}</td>
              </tr>
            ))}
          </tbody>
        </table>
      ) : null}

      <h3>Download and export</h3>
      {CAN_DOWNLOAD.has(role) ? (
        <ul className="downloads">
          <li><a href={`${base}download/`} download data-testid="download-weights">Weights (safetensors, {formatBytes(m.size_bytes)})</a></li>
          {m.exportable !== false ? (
            <>
              <li><a href={`${base}export/?file_format=torchscript`} download>TorchScript (for edge inference)</a></li>
              <li><a href={`${base}export/?file_format=onnx`} download>ONNX</a></li>
            </>
          ) : <li>No TorchScript or ONNX export: this version predates the metadata a rebuild needs; retrain it.</li>}
        </ul>
      ) : <p className="empty">Your role ({role}) may see models but not download them.</p>}
      <p className="empty">Every download and export is recorded in the audit log.</p>

      <h3>Spec</h3>
      <details><summary>Training spec</summary><pre className="spec">{JSON.stringify(m.spec, null, 2)}</pre></details>

      {versions.length > 1 ? (
        <>
          <h3>Versions of {m.name}</h3>
          <table data-testid="model-versions">
            <thead><tr><th scope="col">Version</th><th scope="col">Metrics</th><th scope="col">Registered</th></tr></thead>
            <tbody>
              {versions.map((v) => (
                <tr key={v.id} aria-current={v.id === m.id ? "true" : undefined}>
                  <td>{v.id === m.id ? `v${v.version} (this one)` : <Link to={`/app/t/${slug}/models/${v.id}`}>v{v.version}</Link>}</td>
                  <td>{metricText(v.metrics)}</td>
                  <td>{new Date(v.created_at).toLocaleString()}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </>
      ) : null}
    </section>
  );
}
