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

function cookie(name: string): string | null {
  const m = document.cookie.split("; ").find((c) => c.startsWith(`${name}=`));
  return m ? decodeURIComponent(m.slice(name.length + 1)) : null;
}

async function csrfToken(): Promise<string> {
  // The cookie first: a login in another tab rotates it, and a cached token would then be refused.
  const fresh = cookie("csrftoken");
  if (fresh) return fresh;
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

/** The `api()` path of a page's `next` (or `previous`) link, which the server gives as a full URL. */
export function pagePath(link: string): string {
  const u = new URL(link, window.location.origin);
  return u.pathname.replace(/^\/api\/v1\//, "") + u.search;
}

/** Every item of a cursor-paginated list, following `next` (at most `limit` items). */
export async function allPages<T>(path: string, limit = 5000): Promise<T[]> {
  const out: T[] = [];
  let page = await api<Page<T>>(path);
  out.push(...page.results);
  while (page.next && out.length < limit) {
    page = await api<Page<T>>(pagePath(page.next));
    out.push(...page.results);
  }
  return out;
}

/** A multipart upload with real progress (fetch reports none): ``onProgress(sent, total)``. */
export async function upload<T>(
  path: string,
  form: FormData,
  onProgress: (sent: number, total: number) => void,
): Promise<{ status: number; body: T }> {
  const token = await csrfToken();
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `/api/v1/${path}`);
    xhr.withCredentials = true;
    xhr.setRequestHeader("X-CSRFToken", token);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.onprogress = (e) => onProgress(e.loaded, e.lengthComputable ? e.total : 0);
    xhr.onerror = () => reject(new ApiError(0, "network", "The upload was interrupted. Check your connection and try again."));
    xhr.onload = () => {
      let body: unknown = null;
      try {
        body = xhr.responseText ? JSON.parse(xhr.responseText) : null;
      } catch {
        body = null;
      }
      if (xhr.status >= 200 && xhr.status < 300) resolve({ status: xhr.status, body: body as T });
      else {
        const err = (body as { error?: { code?: string; message?: string; fields?: Record<string, string[]> } } | null)?.error;
        reject(new ApiError(xhr.status, err?.code ?? `http_${xhr.status}`, err?.message ?? xhr.statusText, err?.fields ?? {}));
      }
    };
    xhr.send(form);
  });
}
