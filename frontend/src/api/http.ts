// The REST client: same-origin fetch with the session cookie and the CSRF header, and the API's one
// error shape ({"error": {"code", "message", "fields"}}) turned into an ApiError the forms show.

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly fields: Record<string, string[]> = {},
  ) {
    super(message);
  }
}

let csrf: string | null = null;

async function csrfToken(): Promise<string> {
  if (csrf) return csrf;
  const r = await fetch("/api/v1/auth/csrf/", { credentials: "same-origin" });
  const body = (await r.json()) as { csrf_token: string };
  csrf = body.csrf_token;
  return csrf;
}

export function forgetCsrf(): void {
  csrf = null; // a login or logout rotates the token
}

export async function api<T>(path: string, init: { method?: string; body?: unknown } = {}): Promise<T> {
  const method = init.method ?? "GET";
  const headers: Record<string, string> = { Accept: "application/json" };
  if (method !== "GET") {
    headers["X-CSRFToken"] = await csrfToken();
    headers["Content-Type"] = "application/json";
  }
  let r: Response;
  try {
    r = await fetch(`/api/v1/${path}`, {
      method,
      headers,
      credentials: "same-origin",
      body: init.body === undefined ? (method === "GET" ? undefined : "{}") : JSON.stringify(init.body),
    });
  } catch {
    throw new ApiError(0, "network", "The server cannot be reached. Check your connection and try again.");
  }
  if (r.status === 204) return undefined as T;
  const text = await r.text();
  let body: unknown = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!r.ok) {
    const err = (body as { error?: { code?: string; message?: string; fields?: Record<string, string[]> } } | null)
      ?.error;
    throw new ApiError(r.status, err?.code ?? `http_${r.status}`, err?.message ?? r.statusText, err?.fields ?? {});
  }
  return body as T;
}

export interface Page<T> {
  results: T[];
  next?: string | null;
}
