// The clear pages for a refused or missing object, and for errors: never a blank screen.
import { ApiError } from "../api/http";

export function ErrorPage({ error }: { error: unknown }) {
  if (error instanceof ApiError && (error.status === 404 || error.status === 403)) {
    return (
      <section className="status" role="alert">
        <h2>{error.status === 404 ? "Not found" : "No access"}</h2>
        <p>
          {error.status === 404
            ? "This page does not exist, or it belongs to an organisation you are not a member of."
            : "Your role in this organisation does not allow this page. Ask an admin of the organisation."}
        </p>
        <p><a href="/app/">Back to the start</a></p>
      </section>
    );
  }
  const message = error instanceof Error ? error.message : String(error);
  return (
    <section className="status" role="alert">
      <h2>Something went wrong</h2>
      <p>{message}</p>
      <p><button type="button" onClick={() => window.location.reload()}>Reload</button></p>
    </section>
  );
}

export function Loading({ what }: { what: string }) {
  return <p className="loading" aria-live="polite">Loading {what}…</p>;
}
