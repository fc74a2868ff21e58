// Settings: members and their roles, and API keys (a new key's secret is shown once). What a role
// may not read or change, the API refuses; the page shows its message.
import { type FormEvent, useCallback, useEffect, useState } from "react";

import { api, ApiError, type Page } from "../api/http";
import { ErrorPage, Loading } from "./Status";

interface Member { id: number; email: string; full_name: string; role: string }
interface Key { id: number; name: string; prefix: string; scopes: string[]; status: string; created_at: string; last_used_at: string | null }
const ROLES = ["owner", "admin", "analyst", "integrator", "auditor"];

export function Settings({ slug }: { slug: string }) {
  const [members, setMembers] = useState<Member[] | null>(null);
  const [keys, setKeys] = useState<Key[] | null>(null);
  const [keysError, setKeysError] = useState("");
  const [error, setError] = useState<unknown>(null);
  const [message, setMessage] = useState("");
  const [name, setName] = useState("");
  const [scopes, setScopes] = useState<string[]>(["read"]);
  const [fields, setFields] = useState<Record<string, string[]>>({});
  const [secret, setSecret] = useState<string | null>(null);

  const load = useCallback(async () => {
    setMembers((await api<Page<Member>>(`tenants/${slug}/members/?page_size=200`)).results);
    try {
      setKeys((await api<Page<Key>>(`tenants/${slug}/api-keys/?page_size=200`)).results);
    } catch (e) {
      setKeys([]);
      setKeysError(e instanceof ApiError && e.status === 403 ? "Your role may not see this organisation's API keys." : String(e));
    }
  }, [slug]);
  useEffect(() => { load().catch(setError); }, [load]);

  async function changeRole(m: Member, role: string) {
    setMessage("");
    try {
      await api(`tenants/${slug}/members/${m.id}/`, { method: "PATCH", body: { role } });
      await load();
    } catch (e) {
      setMessage(e instanceof Error ? e.message : String(e));
      await load();
    }
  }

  async function createKey(e: FormEvent) {
    e.preventDefault();
    setSecret(null);
    setMessage("");
    const local: Record<string, string[]> = {};
    if (!name.trim()) local.name = ["Name the key (what uses it)."];
    if (!scopes.length) local.scopes = ["Choose at least one scope."];
    setFields(local);
    if (Object.keys(local).length) return;
    try {
      const made = await api<Key & { key: string }>(`tenants/${slug}/api-keys/`, { method: "POST", body: { name: name.trim(), scopes } });
      setSecret(made.key);
      setName("");
      await load();
    } catch (err) {
      if (err instanceof ApiError) { setFields(err.fields); setMessage(err.message); } else setMessage(String(err));
    }
  }

  async function revoke(k: Key) {
    setMessage("");
    try { await api(`tenants/${slug}/api-keys/${k.id}/`, { method: "DELETE" }); await load(); } catch (e) { setMessage(e instanceof Error ? e.message : String(e)); }
  }

  if (error) return <ErrorPage error={error} />;
  if (!members || !keys) return <Loading what="settings" />;
  return (
    <section className="settings">
      <h2>Settings</h2>
      {message ? <p className="error" role="alert">{message}</p> : null}
      <h3>Members</h3>
      <table data-testid="members">
        <thead><tr><th scope="col">Member</th><th scope="col">E-mail</th><th scope="col">Role</th></tr></thead>
        <tbody>
          {members.map((m) => (
            <tr key={m.id}>
              <th scope="row">{m.full_name || m.email}</th><td>{m.email}</td>
              <td>
                <label className="sr-only" htmlFor={`role-${m.id}`}>Role of {m.email}</label>
                <select id={`role-${m.id}`} value={m.role} onChange={(e) => void changeRole(m, e.target.value)}>
                  {ROLES.map((r) => <option key={r} value={r}>{r}</option>)}
                </select>
              </td>
            </tr>
          ))}
        </tbody>
      </table>

      <h3>API keys</h3>
      {keysError ? <p className="empty">{keysError}</p> : (
        <>
          {keys.length === 0 ? <p className="empty">No API keys.</p> : (
            <table data-testid="api-keys">
              <thead><tr><th scope="col">Name</th><th scope="col">Prefix</th><th scope="col">Scopes</th><th scope="col">Status</th><th scope="col">Last used</th><th scope="col"></th></tr></thead>
              <tbody>
                {keys.map((k) => (
                  <tr key={k.id}>
                    <td>{k.name}</td><td><code>{k.prefix}</code></td><td>{k.scopes.join(", ")}</td><td>{k.status}</td>
                    <td>{k.last_used_at ? new Date(k.last_used_at).toLocaleString() : "never"}</td>
                    <td>{k.status === "active" ? <button type="button" onClick={() => void revoke(k)}>Revoke {k.name}</button> : null}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          )}
          <form className="inline" onSubmit={createKey} noValidate>
            <label htmlFor="key-name">New key</label>
            <input id="key-name" value={name} onChange={(e) => setName(e.target.value)} aria-invalid={!!fields.name} />
            {["read", "write"].map((s) => (
              <label key={s}>
                <input type="checkbox" checked={scopes.includes(s)}
                       onChange={(e) => setScopes(e.target.checked ? [...scopes, s] : scopes.filter((x) => x !== s))} /> {s}
              </label>
            ))}
            <button type="submit">Create key</button>
            {fields.name ? <p className="field-error" role="alert">{fields.name.join(" ")}</p> : null}
            {fields.scopes ? <p className="field-error" role="alert">{fields.scopes.join(" ")}</p> : null}
          </form>
          {secret ? (
            <p className="secret" role="status" data-testid="new-key">
              The key, shown once (store it now): <code>{secret}</code>
            </p>
          ) : null}
        </>
      )}
    </section>
  );
}
