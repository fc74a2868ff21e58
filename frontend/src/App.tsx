import { useEffect, useState } from "react";

import { api, ApiError, forgetCsrf } from "./api/http";
import { resetLiveClient, useLiveStatus } from "./live/useLive";
import { FederationLive } from "./pages/FederationLive";
import { Audit } from "./pages/Audit";
import { DatasetPage, Datasets } from "./pages/Datasets";
import { Federations } from "./pages/Federations";
import { JobLive, Jobs } from "./pages/Jobs";
import { ModelPage, Models } from "./pages/Models";
import { AcceptInvitation, Settings } from "./pages/Settings";
import { type Me, SignIn } from "./pages/SignIn";
import { ErrorPage, Loading } from "./pages/Status";
import { match, navigate, usePath } from "./router";

interface Tenant { id: number; slug: string; name: string; role: string; status: string }

export function App() {
  const [me, setMe] = useState<Me | null | undefined>(undefined);
  const [tenants, setTenants] = useState<Tenant[] | null>(null);
  const [error, setError] = useState<unknown>(null);
  const path = usePath();
  const route = match(path);
  const live = useLiveStatus();

  useEffect(() => {
    api<Me>("auth/me/").then((m) => setMe(m.id ? m : null), (e) => (e instanceof ApiError && e.status < 500 ? setMe(null) : setError(e)));
  }, []);
  useEffect(() => {
    if (me) api<Tenant[]>("tenants/").then(setTenants, setError);
  }, [me]);
  // After accepting an invitation: the organisation switcher lists the new organisation.
  const reloadTenants = () => { api<Tenant[]>("tenants/").then(setTenants, setError); };
  useEffect(() => {
    const out = () => { forgetCsrf(); resetLiveClient(); setMe(null); setTenants(null); };
    window.addEventListener("cohort:signed-out", out);
    return () => window.removeEventListener("cohort:signed-out", out);
  }, []);
  const slugOf = "slug" in route ? route.slug : tenants?.[0]?.slug;
  useEffect(() => {
    // "/" and "/app/" open the first organisation's federations (replacing, so Back still works).
    if (me && tenants && route.page === "home" && slugOf) {
      window.history.replaceState({}, "", `/app/t/${slugOf}/federations`);
      window.dispatchEvent(new PopStateEvent("popstate"));
    }
  }, [me, tenants, route.page, slugOf]);

  if (error) return <ErrorPage error={error} />;
  if (me === undefined) return <Loading what="Cohort" />;
  if (me === null) return <SignIn onSignedIn={(m) => setMe(m)} />;
  if (!tenants) return <Loading what="your organisations" />;

  const slug = slugOf;
  const role = tenants.find((t) => t.slug === slug)?.role ?? "";
  if (route.page === "home" && slug) return <Loading what="federations" />;

  async function signOut() {
    await api("auth/logout/", { method: "POST" }).catch(() => undefined);
    forgetCsrf();
    resetLiveClient();
    setMe(null);
    setTenants(null);
  }

  return (
    <div className="app">
      <header className="top">
        <a className="brand" href="/app/">Cohort</a>
        <nav aria-label="Sections">
          <a href={`/app/t/${slug}/datasets`} aria-current={route.page.startsWith("dataset") ? "page" : undefined}
             onClick={(e) => { e.preventDefault(); navigate(`/app/t/${slug}/datasets`); }}>Datasets</a>
          <a href={`/app/t/${slug}/federations`} aria-current={route.page.startsWith("federation") ? "page" : undefined}
             onClick={(e) => { e.preventDefault(); navigate(`/app/t/${slug}/federations`); }}>Federations</a>
          <a href={`/app/t/${slug}/jobs`} aria-current={route.page.startsWith("job") ? "page" : undefined}
             onClick={(e) => { e.preventDefault(); navigate(`/app/t/${slug}/jobs`); }}>Jobs</a>
          <a href={`/app/t/${slug}/models`} aria-current={route.page.startsWith("model") ? "page" : undefined}
             onClick={(e) => { e.preventDefault(); navigate(`/app/t/${slug}/models`); }}>Models</a>
          {["owner", "admin", "auditor"].includes(role) ? (
            <a href={`/app/t/${slug}/audit`} aria-current={route.page === "audit" ? "page" : undefined}
               onClick={(e) => { e.preventDefault(); navigate(`/app/t/${slug}/audit`); }}>Audit</a>
          ) : null}
          <a href={`/app/t/${slug}/settings`} aria-current={route.page === "settings" ? "page" : undefined}
             onClick={(e) => { e.preventDefault(); navigate(`/app/t/${slug}/settings`); }}>Settings</a>
        </nav>
        <label htmlFor="tenant">Organisation</label>
        <select id="tenant" value={slug ?? ""} onChange={(e) => navigate(`/app/t/${e.target.value}/federations`)}>
          {tenants.map((t) => <option key={t.slug} value={t.slug}>{t.name} ({t.role})</option>)}
        </select>
        {live !== "closed" ? (
          <span className={`live ${live}`} aria-live="polite" data-testid="live-status">{live === "open" ? "live" : live}</span>
        ) : null}
        <span className="who">{me.email}</span>
        <button type="button" onClick={() => void signOut()}>Sign out</button>
      </header>
      <main>
        {tenants.length === 0 ? (
          <section>
            <p className="empty">You are not a member of any organisation yet. Paste an invitation's token to join one.</p>
            <AcceptInvitation onJoined={reloadTenants} />
          </section>
        ) : null}
        {route.page === "federations" ? <Federations slug={route.slug} /> : null}
        {route.page === "federation" ? <FederationLive key={`${route.slug}/${route.id}`} slug={route.slug} id={route.id} /> : null}
        {route.page === "settings" ? <Settings key={route.slug} slug={route.slug} role={role} onJoined={reloadTenants} /> : null}
        {route.page === "audit" ? <Audit key={route.slug} slug={route.slug} /> : null}
        {route.page === "datasets" ? <Datasets slug={route.slug} /> : null}
        {route.page === "dataset" ? <DatasetPage key={`${route.slug}/${route.id}`} slug={route.slug} id={route.id} role={role} /> : null}
        {route.page === "jobs" ? <Jobs key={route.slug} slug={route.slug} role={role} /> : null}
        {route.page === "job" ? <JobLive key={`${route.slug}/${route.id}`} slug={route.slug} id={route.id} /> : null}
        {route.page === "models" ? <Models key={route.slug} slug={route.slug} /> : null}
        {route.page === "model" ? <ModelPage key={`${route.slug}/${route.id}`} slug={route.slug} id={route.id} role={role} /> : null}
        {route.page === "missing" ? <ErrorPage error={new ApiError(404, "not_found", "Not found")} /> : null}
      </main>
    </div>
  );
}
