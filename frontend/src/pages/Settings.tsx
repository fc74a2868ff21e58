// Settings: members and their roles, invitations (owners and admins; the token is shown once),
// API keys with an optional expiry (a new key's secret is shown once), and accepting an invitation.
// What a role may not read or change, the API refuses; the page shows its message.
import { type FormEvent, type ReactNode, useCallback, useEffect, useState } from "react";

import { allPages, api, ApiError } from "../api/http";
import { isoOfLocal, shownTime } from "../time";
import { ErrorPage, Loading } from "./Status";

interface Member { id: number; email: string; full_name: string; role: string }
interface Key {
  id: number; name: string; prefix: string; scopes: string[]; status: string; created_at: string;
  expires_at: string | null; last_used_at: string | null;
}
export interface Invitation {
  id: number; email: string; role: string; status: string; created_at: string; expires_at: string;
  accepted_at: string | null; revoked_at: string | null;
}
type Fields = Record<string, string[]>;
const ROLES = ["owner", "admin", "analyst", "integrator", "auditor"];
const INVITERS = ["owner", "admin"]; // invitation.list, .create and .revoke
const EMAIL = /^[^@\s]+@[^@\s]+\.[^@\s]+$/;

/** The id of a form's error paragraph for a field, and the props that tie the field to it. */
function fieldProps(form: string, fields: Fields, name: string) {
  const id = `${form}-error-${name.replace(/[^a-z0-9_-]/gi, "-")}`;
  return { "aria-invalid": !!fields[name], "aria-describedby": fields[name] ? id : undefined };
}
function FieldError({ form, fields, name }: { form: string; fields: Fields; name: string }) {
  const msgs = fields[name];
  return msgs ? <p id={`${form}-error-${name.replace(/[^a-z0-9_-]/gi, "-")}`} className="field-error" role="alert">{msgs.join(" ")}</p> : null;
}
/** Server field errors the form has no input for, listed with their name. */
function OtherErrors({ fields, placed }: { fields: Fields; placed: string[] }): ReactNode {
  return Object.entries(fields).filter(([k]) => !placed.includes(k))
    .map(([k, msgs]) => <p key={k} className="field-error" role="alert">{k === "non_field_errors" ? "" : `${k}: `}{msgs.join(" ")}</p>);
}

/** The client's checks of the invitation form (the server checks them again). */
export function checkInvitation(email: string, ttl: string): Fields {
  const out: Fields = {};
  if (!EMAIL.test(email.trim())) out.email = ["Enter the e-mail address to invite."];
  if (!/^\d+$/.test(ttl.trim()) || Number(ttl) < 1 || Number(ttl) > 30) out.ttl_days = ["A whole number of days from 1 to 30."];
  return out;
}

/** The client's checks of the API key form; `expires` is a `datetime-local` value or empty (never). */
export function checkKey(name: string, scopes: string[], expires: string, now = new Date()): Fields {
  const out: Fields = {};
  if (!name.trim()) out.name = ["Name the key (what uses it)."];
  else if (name.trim().length > 100) out.name = ["At most 100 characters."];
  if (!scopes.length) out.scopes = ["Choose at least one scope."];
  if (expires) {
    const iso = isoOfLocal(expires);
    if (!iso) out.expires_at = ["Enter a date and time, or leave it empty for a key that does not expire."];
    else if (new Date(iso) <= now) out.expires_at = ["The expiry must be in the future."];
  }
  return out;
}

export function Settings({ slug, role, onJoined }: { slug: string; role: string; onJoined?: (slug: string) => void }) {
  const [members, setMembers] = useState<Member[] | null>(null);
  const [keys, setKeys] = useState<Key[] | null>(null);
  const [keysError, setKeysError] = useState("");
  const [error, setError] = useState<unknown>(null);
  const [message, setMessage] = useState("");
  const [name, setName] = useState("");
  const [scopes, setScopes] = useState<string[]>(["read"]);
  const [expires, setExpires] = useState("");
  const [fields, setFields] = useState<Fields>({});
  const [secret, setSecret] = useState<string | null>(null);

  const loadMembers = useCallback(async () => {
    setMembers(await allPages<Member>(`tenants/${slug}/members/?page_size=200`));
  }, [slug]);
  const loadKeys = useCallback(async () => {
    try {
      setKeys(await allPages<Key>(`tenants/${slug}/api-keys/?page_size=200`));
    } catch (e) {
      setKeys([]);
      setKeysError(e instanceof ApiError && e.status === 403 ? "Your role may not see this organisation's API keys." : String(e));
    }
  }, [slug]);
  useEffect(() => { loadMembers().then(loadKeys).catch(setError); }, [loadMembers, loadKeys]);

  async function changeRole(m: Member, newRole: string) {
    setMessage("");
    try {
      await api(`tenants/${slug}/members/${m.id}/`, { method: "PATCH", body: { role: newRole } });
    } catch (e) {
      setMessage(e instanceof Error ? e.message : String(e));
    }
    await loadMembers().catch(setError);
  }

  async function createKey(e: FormEvent) {
    e.preventDefault();
    setSecret(null);
    setMessage("");
    const local = checkKey(name, scopes, expires);
    setFields(local);
    if (Object.keys(local).length) return;
    try {
      const body = { name: name.trim(), scopes, ...(expires ? { expires_at: isoOfLocal(expires) } : {}) };
      const made = await api<Key & { key: string }>(`tenants/${slug}/api-keys/`, { method: "POST", body });
      setSecret(made.key);
      setName("");
      setExpires("");
      await loadKeys();
    } catch (err) {
      if (err instanceof ApiError) { setFields(err.fields); setMessage(err.message); } else setMessage(String(err));
    }
  }

  async function revoke(k: Key) {
    setMessage("");
    try { await api(`tenants/${slug}/api-keys/${k.id}/`, { method: "DELETE" }); await loadKeys(); } catch (e) { setMessage(e instanceof Error ? e.message : String(e)); }
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

      <Invitations slug={slug} role={role} />

      <h3>API keys</h3>
      {keysError ? <p className="empty">{keysError}</p> : (
        <>
          {keys.length === 0 ? <p className="empty">No API keys.</p> : (
            <table data-testid="api-keys">
              <thead><tr><th scope="col">Name</th><th scope="col">Prefix</th><th scope="col">Scopes</th><th scope="col">Status</th><th scope="col">Expires</th><th scope="col">Last used</th><th scope="col"></th></tr></thead>
              <tbody>
                {keys.map((k) => (
                  <tr key={k.id}>
                    <td>{k.name}</td><td><code>{k.prefix}</code></td><td>{k.scopes.join(", ")}</td><td>{k.status}</td>
                    <td>{shownTime(k.expires_at, "never")}</td>
                    <td>{shownTime(k.last_used_at, "never")}</td>
                    <td>{k.status === "active" ? <button type="button" onClick={() => void revoke(k)}>Revoke {k.name}</button> : null}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          )}
          <form className="inline" onSubmit={createKey} noValidate>
            <label htmlFor="key-name">New key</label>
            <input id="key-name" value={name} onChange={(e) => setName(e.target.value)} {...fieldProps("key", fields, "name")} />
            <fieldset className="scopes" aria-describedby={fields.scopes ? "key-error-scopes" : undefined}>
              <legend className="sr-only">Scopes</legend>
              {["read", "write"].map((s) => (
                <label key={s}>
                  <input type="checkbox" checked={scopes.includes(s)}
                         onChange={(e) => setScopes(e.target.checked ? [...scopes, s] : scopes.filter((x) => x !== s))} /> {s}
                </label>
              ))}
            </fieldset>
            <label htmlFor="key-expires">Expires (empty: never)</label>
            <input id="key-expires" type="datetime-local" value={expires} onChange={(e) => setExpires(e.target.value)}
                   {...fieldProps("key", fields, "expires_at")} />
            <button type="submit">Create key</button>
            <FieldError form="key" fields={fields} name="name" />
            <FieldError form="key" fields={fields} name="scopes" />
            <FieldError form="key" fields={fields} name="expires_at" />
            <OtherErrors fields={fields} placed={["name", "scopes", "expires_at"]} />
          </form>
          {secret ? (
            <p className="secret" role="status" data-testid="new-key">
              The key, shown once (store it now): <code>{secret}</code>
            </p>
          ) : null}
        </>
      )}

      <h3>Join another organisation</h3>
      <AcceptInvitation onJoined={onJoined} />
    </section>
  );
}

/** Owners and admins: the pending invitations (revoke one), the earlier ones, and a form to invite. */
function Invitations({ slug, role }: { slug: string; role: string }) {
  const allowed = INVITERS.includes(role);
  const [items, setItems] = useState<Invitation[] | null>(null);
  const [refused, setRefused] = useState("");
  const [message, setMessage] = useState("");
  const [email, setEmail] = useState("");
  const [invitedRole, setInvitedRole] = useState("analyst");
  const [ttl, setTtl] = useState("7");
  const [fields, setFields] = useState<Fields>({});
  const [made, setMade] = useState<(Invitation & { token: string }) | null>(null);
  const [busy, setBusy] = useState(false);

  const load = useCallback(async () => {
    try {
      setItems(await allPages<Invitation>(`tenants/${slug}/invitations/?page_size=200`));
    } catch (e) {
      setItems([]);
      setRefused(e instanceof ApiError && e.status === 403 ? "Only owners and admins invite members and see invitations." : e instanceof Error ? e.message : String(e));
    }
  }, [slug]);
  useEffect(() => { if (allowed) void load(); }, [allowed, load]);

  async function invite(e: FormEvent) {
    e.preventDefault();
    setMade(null);
    setMessage("");
    const local = checkInvitation(email, ttl);
    setFields(local);
    if (Object.keys(local).length) return;
    setBusy(true);
    try {
      const inv = await api<Invitation & { token: string }>(`tenants/${slug}/invitations/`, {
        method: "POST", body: { email: email.trim(), role: invitedRole, ttl_days: Number(ttl) },
      });
      setMade(inv);
      setEmail("");
      await load();
    } catch (err) {
      if (err instanceof ApiError) { setFields(err.fields); setMessage(err.message); } else setMessage(String(err));
    } finally {
      setBusy(false);
    }
  }

  async function revoke(inv: Invitation) {
    setMessage("");
    setMade(null);
    try {
      await api(`tenants/${slug}/invitations/${inv.id}/`, { method: "DELETE" });
    } catch (e) {
      setMessage(e instanceof Error ? e.message : String(e));
    }
    await load();
  }

  if (!allowed) return (<><h3>Invitations</h3><p className="empty">Only owners and admins invite members and see invitations.</p></>);
  if (!items) return (<><h3>Invitations</h3><Loading what="invitations" /></>);
  if (refused) return (<><h3>Invitations</h3><p className="empty">{refused}</p></>);
  const pending = items.filter((i) => i.status === "pending");
  const earlier = items.filter((i) => i.status !== "pending");
  return (
    <>
      <h3>Invitations</h3>
      {pending.length === 0 ? <p className="empty">No pending invitations.</p> : (
        <table data-testid="invitations">
          <thead><tr><th scope="col">E-mail</th><th scope="col">Role</th><th scope="col">Sent</th><th scope="col">Expires</th><th scope="col"></th></tr></thead>
          <tbody>
            {pending.map((i) => (
              <tr key={i.id}>
                <td>{i.email}</td><td>{i.role}</td><td>{shownTime(i.created_at)}</td><td>{shownTime(i.expires_at)}</td>
                <td><button type="button" onClick={() => void revoke(i)}>Revoke the invitation to {i.email}</button></td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {earlier.length ? (
        <details>
          <summary>Earlier invitations ({earlier.length}): accepted, revoked or expired</summary>
          <table data-testid="earlier-invitations">
            <thead><tr><th scope="col">E-mail</th><th scope="col">Role</th><th scope="col">Status</th><th scope="col">Sent</th></tr></thead>
            <tbody>
              {earlier.map((i) => (
                <tr key={i.id}><td>{i.email}</td><td>{i.role}</td><td><span className={`badge ${i.status}`}>{i.status}</span></td><td>{shownTime(i.created_at)}</td></tr>
              ))}
            </tbody>
          </table>
        </details>
      ) : null}
      <form className="inline" onSubmit={invite} noValidate>
        <label htmlFor="invite-email">Invite (e-mail)</label>
        <input id="invite-email" type="email" value={email} onChange={(e) => setEmail(e.target.value)} {...fieldProps("invite", fields, "email")} />
        <label htmlFor="invite-role">Invited role</label>
        <select id="invite-role" value={invitedRole} onChange={(e) => setInvitedRole(e.target.value)} {...fieldProps("invite", fields, "role")}>
          {ROLES.filter((r) => role === "owner" || r !== "owner").map((r) => <option key={r} value={r}>{r}</option>)}
        </select>
        <label htmlFor="invite-ttl">Valid for (days)</label>
        <input id="invite-ttl" inputMode="numeric" size={3} value={ttl} onChange={(e) => setTtl(e.target.value)} {...fieldProps("invite", fields, "ttl_days")} />
        <button type="submit" disabled={busy}>Invite</button>
        <FieldError form="invite" fields={fields} name="email" />
        <FieldError form="invite" fields={fields} name="role" />
        <FieldError form="invite" fields={fields} name="ttl_days" />
        <OtherErrors fields={fields} placed={["email", "role", "ttl_days"]} />
      </form>
      {message ? <p className="error" role="alert">{message}</p> : null}
      {made ? (
        <p className="secret" role="status" data-testid="new-invitation">
          The invitation token for {made.email}, shown once (send it to them now): <code>{made.token}</code>. They sign in
          as {made.email} and paste it under <em>Join another organisation</em> in Settings. It expires {shownTime(made.expires_at)}.
        </p>
      ) : null}
    </>
  );
}

/** Accept an invitation with its token (for the signed-in user's own e-mail). */
export function AcceptInvitation({ onJoined }: { onJoined?: (slug: string) => void }) {
  const [token, setToken] = useState("");
  const [fields, setFields] = useState<Fields>({});
  const [message, setMessage] = useState("");
  const [joined, setJoined] = useState<{ tenant: string; role: string } | null>(null);
  const [busy, setBusy] = useState(false);

  async function accept(e: FormEvent) {
    e.preventDefault();
    setMessage("");
    setJoined(null);
    const t = token.trim();
    const local: Fields = {};
    if (!t) local.token = ["Paste the invitation token."];
    else if (!t.startsWith("inv_")) local.token = ["An invitation token starts with inv_."];
    else if (t.length > 200) local.token = ["An invitation token is at most 200 characters."];
    setFields(local);
    if (Object.keys(local).length) return;
    setBusy(true);
    try {
      const m = await api<{ tenant: string; role: string }>("invitations/accept/", { method: "POST", body: { token: t } });
      setJoined(m);
      setToken("");
      onJoined?.(m.tenant);
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) {
        setMessage("No pending invitation to your e-mail address has this token. It may be used, revoked or expired.");
      } else if (err instanceof ApiError) { setFields(err.fields); setMessage(err.message); } else setMessage(String(err));
    } finally {
      setBusy(false);
    }
  }

  return (
    <>
      <form className="inline" onSubmit={accept} noValidate>
        <label htmlFor="accept-token">Invitation token</label>
        <input id="accept-token" value={token} autoComplete="off" onChange={(e) => setToken(e.target.value)} {...fieldProps("accept", fields, "token")} />
        <button type="submit" disabled={busy}>Accept invitation</button>
        <FieldError form="accept" fields={fields} name="token" />
        <OtherErrors fields={fields} placed={["token"]} />
      </form>
      {message ? <p className="error" role="alert">{message}</p> : null}
      {joined ? (
        <p className="ok" role="status" data-testid="joined">
          You joined <a href={`/app/t/${joined.tenant}/federations`}>{joined.tenant}</a> as {joined.role}.
        </p>
      ) : null}
    </>
  );
}
