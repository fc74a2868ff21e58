import { type FormEvent, useState } from "react";

import { ApiError, api, forgetCsrf } from "../api/http";

export interface Me {
  id: number;
  email: string;
  full_name?: string;
}

export function SignIn({ onSignedIn }: { onSignedIn: (me: Me) => void }) {
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const [fields, setFields] = useState<Record<string, string[]>>({});
  const [error, setError] = useState("");
  const [busy, setBusy] = useState(false);

  async function submit(e: FormEvent) {
    e.preventDefault();
    const local: Record<string, string[]> = {};
    if (!/^[^@\s]+@[^@\s]+$/.test(email)) local.email = ["Enter your email address."];
    if (!password) local.password = ["Enter your password."];
    setFields(local);
    setError("");
    if (Object.keys(local).length) return;
    setBusy(true);
    try {
      await api("auth/login/", { method: "POST", body: { email, password } });
      forgetCsrf();
      onSignedIn(await api<Me>("auth/me/"));
    } catch (err) {
      if (err instanceof ApiError) {
        setFields(err.fields);
        setError(err.message);
      } else setError(String(err));
    } finally {
      setBusy(false);
    }
  }

  return (
    <main className="signin">
      <h1>Sign in to Cohort</h1>
      <form onSubmit={submit} noValidate aria-describedby={error ? "signin-error" : undefined}>
        <label htmlFor="email">Email</label>
        <input id="email" type="email" autoComplete="username" value={email}
               aria-invalid={!!fields.email} onChange={(e) => setEmail(e.target.value)} />
        {fields.email ? <p className="field-error" role="alert">{fields.email.join(" ")}</p> : null}
        <label htmlFor="password">Password</label>
        <input id="password" type="password" autoComplete="current-password" value={password}
               aria-invalid={!!fields.password} onChange={(e) => setPassword(e.target.value)} />
        {fields.password ? <p className="field-error" role="alert">{fields.password.join(" ")}</p> : null}
        {error ? <p id="signin-error" className="error" role="alert">{error}</p> : null}
        <button type="submit" disabled={busy}>{busy ? "Signing in…" : "Sign in"}</button>
      </form>
    </main>
  );
}
