// Reading a stream's persisted events over REST (`…/events/?after=N`, cursor-paginated), shaped as
// the websocket's events, for the first load and for the client's gap fill.
import { api, type Page } from "../api/http";
import type { LiveEvent } from "./client";

export async function eventsAfter<R extends { seq: number }>(
  path: string,
  after: number,
  shape: (row: R, prev: number) => LiveEvent,
): Promise<LiveEvent[]> {
  const out: LiveEvent[] = [];
  let url: string | null = `${path}?after=${after}&page_size=500`;
  while (url) {
    const page: Page<R> = await api<Page<R>>(url);
    for (const row of page.results) out.push(shape(row, out.length ? out[out.length - 1].seq : after));
    url = page.next ? apiPath(page.next) : null;
  }
  return out;
}

/** The API path of a cursor's ``next`` link (its path and query, whatever scheme and host the
 * server put in it: behind a TLS proxy it may say http://). */
export function apiPath(next: string): string {
  const u = new URL(next, window.location.origin);
  return `${u.pathname}${u.search}`.replace(/^\/api\/v1\//, "");
}
