// A small router over /app/… paths (Django serves the page at each of them).
import { useEffect, useState } from "react";

export function usePath(): string {
  const [path, setPath] = useState(window.location.pathname);
  useEffect(() => {
    const on = () => setPath(window.location.pathname);
    window.addEventListener("popstate", on);
    return () => window.removeEventListener("popstate", on);
  }, []);
  return path;
}

export function navigate(to: string): void {
  if (to === window.location.pathname) return;
  window.history.pushState({}, "", to);
  window.dispatchEvent(new PopStateEvent("popstate"));
}

export type Route =
  | { page: "home" }
  | { page: "federations"; slug: string }
  | { page: "federation"; slug: string; id: number }
  | { page: "jobs"; slug: string }
  | { page: "audit"; slug: string }
  | { page: "settings"; slug: string }
  | { page: "datasets"; slug: string }
  | { page: "dataset"; slug: string; id: number }
  | { page: "job"; slug: string; id: number }
  | { page: "models"; slug: string }
  | { page: "model"; slug: string; id: number }
  | { page: "missing" };

export function match(path: string): Route {
  const p = path.replace(/\/+$/, "");
  if (p === "" || p === "/app") return { page: "home" };
  let m = /^\/app\/t\/([a-z0-9-]+)\/federations$/.exec(p);
  if (m) return { page: "federations", slug: m[1] };
  m = /^\/app\/t\/([a-z0-9-]+)\/federations\/([1-9][0-9]*)$/.exec(p);
  if (m) return { page: "federation", slug: m[1], id: Number(m[2]) };
  m = /^\/app\/t\/([a-z0-9-]+)\/jobs$/.exec(p);
  if (m) return { page: "jobs", slug: m[1] };
  m = /^\/app\/t\/([a-z0-9-]+)\/jobs\/([1-9][0-9]*)$/.exec(p);
  if (m) return { page: "job", slug: m[1], id: Number(m[2]) };
  m = /^\/app\/t\/([a-z0-9-]+)\/settings$/.exec(p);
  if (m) return { page: "settings", slug: m[1] };
  m = /^\/app\/t\/([a-z0-9-]+)\/audit$/.exec(p);
  if (m) return { page: "audit", slug: m[1] };
  m = /^\/app\/t\/([a-z0-9-]+)\/datasets$/.exec(p);
  if (m) return { page: "datasets", slug: m[1] };
  m = /^\/app\/t\/([a-z0-9-]+)\/datasets\/([1-9][0-9]*)$/.exec(p);
  if (m) return { page: "dataset", slug: m[1], id: Number(m[2]) };
  m = /^\/app\/t\/([a-z0-9-]+)\/models$/.exec(p);
  if (m) return { page: "models", slug: m[1] };
  m = /^\/app\/t\/([a-z0-9-]+)\/models\/([1-9][0-9]*)$/.exec(p);
  if (m) return { page: "model", slug: m[1], id: Number(m[2]) };
  return { page: "missing" };
}
