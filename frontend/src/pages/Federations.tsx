import { useEffect, useState } from "react";

import { api, type Page } from "../api/http";
import { navigate } from "../router";
import { ErrorPage, Loading } from "./Status";

export interface Federation {
  id: number;
  name: string;
  side: string;
  status: string;
  status_reason: string;
  current_round: number | null;
  spec: { rounds?: number; min_participants?: number; round_deadline_seconds?: number; strategy?: { name?: string } };
  result: Record<string, unknown>;
  started_at: string | null;
  finished_at: string | null;
}

export function Federations({ slug }: { slug: string }) {
  const [items, setItems] = useState<Federation[] | null>(null);
  const [error, setError] = useState<unknown>(null);
  useEffect(() => {
    setItems(null);
    api<Page<Federation>>(`tenants/${slug}/federations/?page_size=100`).then((p) => setItems(p.results), setError);
  }, [slug]);
  if (error) return <ErrorPage error={error} />;
  if (!items) return <Loading what="federations" />;
  return (
    <section>
      <h2>Federations</h2>
      {items.length === 0 ? (
        <p className="empty">No federations yet. Create one over the API (<a href="/api/docs/">API docs</a>).</p>
      ) : (
        <table>
          <caption className="sr-only">Federations of this organisation</caption>
          <thead><tr><th scope="col">Name</th><th scope="col">Role</th><th scope="col">Status</th><th scope="col">Round</th></tr></thead>
          <tbody>
            {items.map((f) => (
              <tr key={f.id}>
                <td>
                  <a href={`/app/t/${slug}/federations/${f.id}`}
                     onClick={(e) => { e.preventDefault(); navigate(`/app/t/${slug}/federations/${f.id}`); }}>
                    {f.name}
                  </a>
                </td>
                <td>{f.side}</td>
                <td><span className={`badge ${f.status}`}>{f.status}</span></td>
                <td>{f.current_round ?? "—"}{f.spec.rounds ? ` / ${f.spec.rounds}` : ""}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}
