// One LiveClient per page load (one socket for every stream the app watches).
import { useEffect, useState } from "react";

import { LiveClient, type Status } from "./client";

let shared: LiveClient | null = null;
const listeners = new Set<(s: Status) => void>();

export function liveClient(): LiveClient {
  if (!shared) {
    const proto = window.location.protocol === "https:" ? "wss:" : "ws:";
    shared = new LiveClient({
      url: `${proto}//${window.location.host}/ws/v1/`,
      onStatus: (s) => listeners.forEach((l) => l(s)),
      // The session ended under the socket (logout elsewhere, expiry): the app signs out too.
      onSignedOut: () => window.dispatchEvent(new Event("cohort:signed-out")),
    });
    shared.connect();
  }
  return shared;
}

export function resetLiveClient(): void {
  shared?.close();
  shared = null;
}

export function useLiveStatus(): Status {
  const [status, setStatus] = useState<Status>(shared?.status ?? "closed");
  useEffect(() => {
    listeners.add(setStatus);
    return () => {
      listeners.delete(setStatus);
    };
  }, []);
  return status;
}
