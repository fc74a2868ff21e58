import { cleanup, fireEvent, render, screen, waitFor } from "@testing-library/react";
import { afterEach, describe, expect, it, vi } from "vitest";

import { siteState } from "./FederationLive";
import { SignIn } from "./SignIn";
import { ErrorPage } from "./Status";
import { ApiError } from "../api/http";

afterEach(() => {
  cleanup();
  vi.unstubAllGlobals();
});

function reply(status: number, body: unknown) {
  return Promise.resolve(new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } }));
}

describe("SignIn", () => {
  it("validates on the client before sending anything", async () => {
    const fetch = vi.fn();
    vi.stubGlobal("fetch", fetch);
    render(<SignIn onSignedIn={() => undefined} />);
    fireEvent.click(screen.getByRole("button", { name: "Sign in" }));
    expect(await screen.findByText("Enter your email address.")).toBeTruthy();
    expect(screen.getByText("Enter your password.")).toBeTruthy();
    expect(screen.getByLabelText("Email").getAttribute("aria-invalid")).toBe("true");
    expect(fetch).not.toHaveBeenCalled();
  });

  it("shows the server's message and field errors from the one error shape", async () => {
    vi.stubGlobal("fetch", vi.fn((url: string) =>
      url.endsWith("/auth/csrf/")
        ? reply(200, { csrf_token: "t" })
        : reply(400, { error: { code: "invalid", message: "Check the fields.", fields: { email: ["Unknown domain."] } } }),
    ));
    render(<SignIn onSignedIn={() => undefined} />);
    fireEvent.change(screen.getByLabelText("Email"), { target: { value: "a@b.example" } });
    fireEvent.change(screen.getByLabelText("Password"), { target: { value: "pw" } });
    fireEvent.click(screen.getByRole("button", { name: "Sign in" }));
    expect(await screen.findByText("Unknown domain.")).toBeTruthy();
    expect(screen.getByText("Check the fields.")).toBeTruthy();
  });

  it("signs in and hands over who the user is", async () => {
    const calls: string[] = [];
    vi.stubGlobal("fetch", vi.fn((url: string, init?: RequestInit) => {
      calls.push(`${init?.method ?? "GET"} ${url}`);
      if (url.endsWith("/auth/csrf/")) return reply(200, { csrf_token: "t" });
      if (url.endsWith("/auth/login/")) return reply(200, { id: 3 });
      return reply(200, { id: 3, email: "a@b.example" });
    }));
    const done = vi.fn();
    render(<SignIn onSignedIn={done} />);
    fireEvent.change(screen.getByLabelText("Email"), { target: { value: "a@b.example" } });
    fireEvent.change(screen.getByLabelText("Password"), { target: { value: "pw" } });
    fireEvent.click(screen.getByRole("button", { name: "Sign in" }));
    await waitFor(() => expect(done).toHaveBeenCalledWith({ id: 3, email: "a@b.example" }));
    expect(calls).toContain("POST /api/v1/auth/login/");
  });
});

describe("ErrorPage", () => {
  it("says not found or no access, never a blank screen", () => {
    render(<ErrorPage error={new ApiError(404, "not_found", "Not found.")} />);
    expect(screen.getByRole("heading", { name: "Not found" })).toBeTruthy();
    cleanup();
    render(<ErrorPage error={new ApiError(403, "forbidden", "No.")} />);
    expect(screen.getByRole("heading", { name: "No access" })).toBeTruthy();
  });
});

describe("siteState", () => {
  const ev = (seq: number, site: number | null, data: Record<string, unknown>, round = 1) => ({
    type: "federation.site", stream: "s", seq, prev: seq - 1, time: "t", payload: { round, site, data },
  });
  it("keeps the newest state of each site, with why it failed", () => {
    let s = siteState({}, ev(1, 4, { state: "training", attempt: 1 }));
    s = siteState(s, ev(2, 5, { state: "failed", error: { code: "site_failed", message: "ValueError: bad rows" } }));
    s = siteState(s, ev(3, 4, { state: "submitted", loss: 0.25 }));
    s = siteState(s, ev(4, 4, { approval: "approved" })); // not a training state: ignored
    expect(s[4]).toEqual({ state: "submitted", round: 1, detail: "", loss: 0.25, epsilon: undefined });
    expect(s[5].detail).toBe("ValueError: bad rows");
  });
});

describe("addPoint", () => {
  it("appends each metrics event at its step, a key first seen later padded with nulls", async () => {
    const { addPoint } = await import("./Jobs");
    let c = addPoint({ x: [], series: {} }, 1, { loss: 0.9 });
    c = addPoint(c, 2, { loss: 0.7, val_accuracy: 0.8, note: "x" });
    c = addPoint(c, 3, { loss: 0.5 });
    expect(c.x).toEqual([1, 2, 3]);
    expect(c.series).toEqual({ loss: [0.9, 0.7, 0.5], val_accuracy: [null, 0.8, null] });
  });
});

describe("auditQuery", () => {
  it("leaves out empty filters and adds the extras", async () => {
    const { auditQuery } = await import("./Audit");
    expect(auditQuery({ action_prefix: "grant.", outcome: "", actor_type: "user" }, { file_format: "csv" }))
      .toBe("action_prefix=grant.&actor_type=user&file_format=csv");
    expect(auditQuery({ action_prefix: "", outcome: "", actor_type: "" })).toBe("");
  });
});

describe("parseParam", () => {
  it("turns form text into the JSON a model parameter takes, or says what is wrong", async () => {
    const { parseParam } = await import("./Jobs");
    const hidden = { type: "array", default: [64, 32], max_items: 2, items: { min: 1, max: 8192 } };
    expect(parseParam(hidden, "128, 64")).toEqual({ value: [128, 64] });
    expect(parseParam(hidden, "1, 2, 3").error).toBe("At most 2 numbers.");
    expect(parseParam(hidden, "0").error).toBe("Each from 1 to 8192.");
    expect(parseParam(hidden, "a").error).toBe("Whole numbers, separated by commas.");
    const dropout = { type: "number", default: 0, min: 0, max_exclusive: 1 };
    expect(parseParam(dropout, "0.25")).toEqual({ value: 0.25 });
    expect(parseParam(dropout, "1").error).toBe("Below 1.");
    expect(parseParam(dropout, "")).toEqual({ value: 0 });
    const layers = { type: "integer", default: null, min: 0, max: 48, nullable: true };
    expect(parseParam(layers, "")).toEqual({ value: null });
    expect(parseParam(layers, "2.5").error).toBe("A whole number.");
    expect(parseParam({ type: "boolean", default: false }, "true")).toEqual({ value: true });
  });
});

describe("JobCreate", () => {
  const catalogue = {
    models: [
      { name: "logistic_regression", inputs: "tabular", description: "Logistic regression.", params: {} },
      { name: "mlp", inputs: "tabular", description: "A multilayer perceptron.", params: {
        hidden: { type: "array", default: [64, 32], max_items: 16, items: { min: 1, max: 8192 } },
        dropout: { type: "number", default: 0, min: 0, max_exclusive: 1 } } },
    ],
    optimizers: ["sgd", "adam", "adamw"], schedules: ["constant"],
    defaults: { epochs: 10, batch_size: 32, optimizer: { name: "adamw", lr: 0.001 } },
  };
  function server(onPost: (body: Record<string, unknown>) => Promise<Response>) {
    vi.stubGlobal("fetch", vi.fn((url: string, init?: RequestInit) => {
      if (url.endsWith("/auth/csrf/")) return reply(200, { csrf_token: "t" });
      if (url.includes("/training/catalogue/")) return reply(200, catalogue);
      if (url.includes("/shared-datasets/")) return reply(200, { results: [
        { id: 9, name: "notes", owner: "lab", permissions: ["process"], version: { id: 90, number: 2 } },
        { id: 8, name: "fed-only", owner: "lab", permissions: ["federate"], version: { id: 80, number: 1 } } ] });
      if (url.includes("/datasets/3/versions/")) return reply(200, { results: [
        { id: 31, number: 2, kind: "deidentified", status: "ready", rows: 569 },
        { id: 30, number: 1, kind: "raw", status: "ready", rows: 569 } ] });
      if (url.includes("/datasets/")) return reply(200, { results: [{ id: 3, name: "bc" }] });
      if (url.endsWith("/jobs/") && init?.method === "POST") return onPost(JSON.parse(String(init.body)));
      return reply(404, { error: { code: "not_found", message: "Not found." } });
    }));
  }

  it("offers the registry's models and only trainable versions, validates, and shows the server's field errors", async () => {
    const posted: Record<string, unknown>[] = [];
    server((body) => {
      posted.push(body);
      return reply(400, { error: { code: "validation_error", message: "The request is invalid; see fields.",
        fields: { "spec.model.params.hidden[0]": ["Expected an integer from 1 to 8192."], "spec.batch_size": ["Too large."],
          "spec.schedule.name": ["Unknown schedule."] } } });
    });
    const { JobCreate } = await import("./Jobs");
    render(<JobCreate slug="acme" />);
    const version = (await screen.findByLabelText("Dataset version")) as HTMLSelectElement;
    expect([...version.options].map((o) => o.value)).toEqual(["31", "90"]); // no raw version, no federate-only grant
    expect(screen.getByLabelText("hidden")).toHaveProperty("value", "64, 32");
    fireEvent.click(screen.getByRole("button", { name: "Start job" }));
    expect(await screen.findByText("Name the job.")).toBeTruthy();
    fireEvent.change(screen.getByLabelText("Name"), { target: { value: "bc-mlp" } });
    fireEvent.change(screen.getByLabelText("dropout"), { target: { value: "1.5" } });
    fireEvent.click(screen.getByRole("button", { name: "Start job" }));
    expect(await screen.findByText("Below 1.")).toBeTruthy();
    expect(posted).toHaveLength(0);
    fireEvent.change(screen.getByLabelText("dropout"), { target: { value: "0.1" } });
    fireEvent.change(screen.getByLabelText("hidden"), { target: { value: "16" } });
    fireEvent.click(screen.getByRole("button", { name: "Start job" }));
    expect(await screen.findByText("The request is invalid; see fields.")).toBeTruthy();
    expect(screen.getByText("Too large.")).toBeTruthy();
    expect(screen.getByText(/hidden\[0\]: Expected an integer/)).toBeTruthy(); // a list item, under its parameter
    expect(screen.getByText("schedule.name: Unknown schedule.")).toBeTruthy(); // a field the form has no input for
    expect(screen.getByLabelText("hidden").getAttribute("aria-invalid")).toBe("true");
    expect(screen.getByLabelText("Batch size").getAttribute("aria-describedby")).toBe("job-error-spec-batch_size");
    expect(posted[0]).toEqual({ name: "bc-mlp", dataset_version: 31, spec: {
      model: { name: "mlp", params: { hidden: [16], dropout: 0.1 } }, epochs: 10, batch_size: 32, optimizer: { name: "adamw", lr: 0.001 } } });
  });
});

describe("ModelPage", () => {
  it("shows a federation model's metrics, lineage of every site's dataset version, and downloads by role", async () => {
    const mv = {
      id: 7, name: "demo", version: 2, source: "federation", job: null, federation: 4,
      spec: { model: { name: "mlp" } }, metrics: { accuracy: 0.97, loss: 0.08 },
      lineage: { federation_id: 4, strategy: "fedavg", round: 10, rounds: 10, spec_hash: "abc", metrics_on: "sites",
        datasets: [{ site: "st-marys", role: "train", dataset_id: 1, dataset_version_id: 11, dataset_owner_tenant_id: 2,
          dataset_content_sha256: "f".repeat(64), rounds_trained: 10, epsilon: null }] },
      input_info: { kind: "tabular", problem: "classification" }, sha256: "e".repeat(64), size_bytes: 4096, created_at: "2026-12-07T10:00:00Z",
    };
    vi.stubGlobal("fetch", vi.fn((url: string) =>
      url.includes("?name=") ? reply(200, { results: [mv, { ...mv, id: 6, version: 1 }] }) : reply(200, mv)));
    const { ModelPage } = await import("./Models");
    render(<ModelPage slug="lab" id={7} role="analyst" />);
    expect(await screen.findByText("0.9700")).toBeTruthy();
    expect(screen.getByText("st-marys")).toBeTruthy();
    expect(screen.getByText("#11")).toBeTruthy();
    expect(screen.getByTestId("download-weights").getAttribute("href")).toBe("/api/v1/tenants/lab/models/7/download/");
    expect(await screen.findByText("v1")).toBeTruthy(); // the other version, linked
    cleanup();
    render(<ModelPage slug="lab" id={7} role="auditor" />);
    expect(await screen.findByText(/may see models but not download them/)).toBeTruthy();
    expect(screen.queryByTestId("download-weights")).toBeNull();
  });
});

describe("siteCurves", () => {
  it("draws one line per visible site over the rounds, private sites left out", async () => {
    const { siteCurves, siteMetricChoices } = await import("./FederationLive");
    const site = (id: number, label: string) => ({ id, label, owner: label, role: "train", approval: "approved", active: true, dropped_reason: "" });
    const slot = (round: number, loss: number | null, acc?: number) => ({
      round, site: "", state: "submitted", reason: "", wait_reason: "", loss, epsilon: null, seconds: 1,
      eval_metrics: (acc === undefined ? {} : { accuracy: acc }) as Record<string, number>, error: {},
    });
    const rows = [
      { site: site(1, "a"), slots: [slot(0, null), slot(1, 0.7, 0.8), slot(2, 0.5, 0.9)] }, // round 0: statistics only
      { site: site(2, "b"), slots: [slot(2, 0.6)] }, // joined late: round 1 is a gap
      { site: site(3, "hidden"), slots: [slot(1, null), slot(2, null)] }, // its owner keeps metrics private
    ];
    expect(siteMetricChoices(rows)).toEqual(["loss", "eval:accuracy"]);
    expect(siteCurves(rows, "loss")).toEqual({ x: [1, 2], series: [{ label: "a", values: [0.7, 0.5] }, { label: "b", values: [null, 0.6] }] });
    expect(siteCurves(rows, "eval:accuracy").series).toEqual([{ label: "a", values: [0.8, 0.9] }]);
  });
});

describe("policy editor", () => {
  it("round-trips the proposed policy and checks it before sending", async () => {
    const { rowsOf, policyOf } = await import("./DatasetPolicy");
    const proposed = { columns: { email: { action: "drop", params: {} }, zip: { action: "generalise", params: { prefix: 3 } }, age: { action: "keep" } },
      quasi_identifiers: ["zip", "age"], k: 5 };
    const rows = rowsOf(["email", "zip", "age", "label"], proposed);
    expect(rows.zip).toEqual({ action: "generalise", params: '{"prefix":3}', qi: true });
    expect(rows.label).toEqual({ action: "keep", params: "", qi: false });
    expect(policyOf(rows, "5")).toEqual({ errors: {}, policy: {
      columns: { email: { action: "drop", params: {} }, zip: { action: "generalise", params: { prefix: 3 } } },
      quasi_identifiers: ["zip", "age"], k: 5 } });
    expect(policyOf({ ...rows, zip: { ...rows.zip, params: "{prefix: 3" } }, "5").errors)
      .toEqual({ "policy.columns.zip.params": ['Parameters are a JSON object, e.g. {"keep_last": 4}.'] });
    expect(policyOf(rows, "1").errors["policy.k"]).toBeTruthy();
    const noQi = Object.fromEntries(Object.entries(rows).map(([k, r]) => [k, { ...r, qi: false }]));
    expect(policyOf(noQi, "5").errors["policy.quasi_identifiers"]).toBeTruthy();
    expect(policyOf(noQi, "").policy?.k).toBeNull();
    expect(policyOf({ ...rows, age: { ...rows.age, action: "drop" } }, "5").errors["policy.columns.age"]).toBeTruthy();
  });

  it("shows the server's field errors under the column they name", async () => {
    vi.stubGlobal("fetch", vi.fn((url: string) => url.endsWith("/auth/csrf/") ? reply(200, { csrf_token: "t" })
      : reply(400, { error: { code: "validation_error", message: "The request is invalid; see fields.",
        fields: { "policy.columns.ssn": ["Identifier columns must be dropped, masked or pseudonymised, not kept."],
          "policy.quasi_identifiers[0]": ["Unknown column 'zip'."] } } })));
    const { PolicyEditor } = await import("./DatasetPolicy");
    const done = vi.fn();
    render(<PolicyEditor base="tenants/a/datasets/1/" versionId={2} versionNumber={1} columns={["ssn", "age"]}
                         proposed={{ columns: { ssn: { action: "pseudonymise" } }, quasi_identifiers: [], k: null }} onCreated={done} />);
    fireEvent.change(screen.getByLabelText("Action for ssn"), { target: { value: "keep" } });
    fireEvent.click(screen.getByRole("button", { name: "Apply policy" }));
    expect(await screen.findByText("Identifier columns must be dropped, masked or pseudonymised, not kept.")).toBeTruthy();
    expect(screen.getByText("Unknown column 'zip'.")).toBeTruthy(); // a list item's error is shown too
    expect(done).not.toHaveBeenCalled();
  });
});

describe("BudgetPanel", () => {
  const budget = { epsilon_total: "8.000000", delta_total: "0.000010000000", epsilon_spent: "1.500000", delta_spent: "0",
    epsilon_reserved: "2.000000", delta_reserved: "0", epsilon_remaining: "4.500000", delta_remaining: "0.00001", composition: "basic" };
  it("shows spent, reserved and left; only the owner sets it, validated first", async () => {
    const puts: unknown[] = [];
    vi.stubGlobal("fetch", vi.fn((url: string, init?: RequestInit) => {
      if (url.endsWith("/auth/csrf/")) return reply(200, { csrf_token: "t" });
      if (url.includes("/reservations/")) return reply(200, { results: [{ id: 1, consumer: "lab", state: "reserved", epsilon: "2.0", epsilon_spent: null, purpose: "federation 4", reference: "", created_at: "2026-12-07T10:00:00Z" }] });
      if (init?.method === "PUT") { puts.push(JSON.parse(String(init.body))); return reply(200, { ...budget, epsilon_total: "10.000000", epsilon_remaining: "6.500000" }); }
      return reply(200, budget);
    }));
    const { BudgetPanel } = await import("./DatasetPolicy");
    render(<BudgetPanel base="tenants/a/datasets/1/" role="owner" />);
    expect((await screen.findByTestId("budget-summary")).textContent).toContain("1.5 spent + 2 reserved of 8");
    expect(screen.getByText("federation 4")).toBeTruthy();
    fireEvent.change(screen.getByLabelText("Total ε"), { target: { value: "-1" } });
    fireEvent.click(screen.getByRole("button", { name: "Set budget" }));
    expect(await screen.findByText("ε is a number above 0, at most 1000.")).toBeTruthy();
    expect(puts).toHaveLength(0);
    fireEvent.change(screen.getByLabelText("Total ε"), { target: { value: "10" } });
    fireEvent.click(screen.getByRole("button", { name: "Set budget" }));
    expect(await screen.findByText("Saved.")).toBeTruthy();
    expect(puts).toEqual([{ epsilon: "10", delta: "0.00001" }]);
    expect(screen.getByTestId("budget-summary").textContent).toContain("of 10");
    cleanup();
    render(<BudgetPanel base="tenants/a/datasets/1/" role="analyst" />);
    await screen.findByTestId("budget-summary");
    expect(screen.queryByRole("button", { name: "Set budget" })).toBeNull();
  });
});

describe("nullShare", () => {
  it("reads a raw report's ratio or a de-identified one's count", async () => {
    const { nullShare } = await import("./Datasets");
    expect(nullShare({ null_ratio: 0.25, nulls: 1 }, 4)).toBe("25.0%");
    expect(nullShare({ nulls: 1 }, 4)).toBe("25.0%");
    expect(nullShare({}, 4)).toBe("—");
    expect(nullShare({ nulls: 0 }, 0)).toBe("—");
  });
});
