// Times typed in a `datetime-local` input (the browser's local time, no zone) and the API's ISO 8601.

/** The instant a `datetime-local` value names, as ISO 8601 in UTC; null for an empty or invalid value. */
export function isoOfLocal(value: string): string | null {
  if (!/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?$/.test(value)) return null;
  const t = new Date(value); // a date-time without an offset is local time
  return Number.isNaN(t.getTime()) ? null : t.toISOString();
}

/** A time from the API for people, or `none` when there is none. */
export function shownTime(iso: string | null | undefined, none = "—"): string {
  return iso ? new Date(iso).toLocaleString() : none;
}
