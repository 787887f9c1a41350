#!/usr/bin/env node
// A Node.js (@grpc/grpc-js) client of the thread-service, for the tests in
// tests/test_node_client.py: one named scenario against one target, its
// results printed as one JSON object on stdout.
//
//   node tests/node/client.mjs --target 127.0.0.1:50051 --scenario long-values \
//       --cwd /tmp --google-protos "$(python -c 'import google.rpc.status_pb2 as s, pathlib; print(pathlib.Path(s.__file__).parents[2])')"
//
// The service's protos are loaded from protos/ as they are, with
// @grpc/proto-loader. Error details (the google.rpc.Status in the
// `grpc-status-details-bin` trailer) are decoded with protobufjs from the
// .proto files that googleapis-common-protos ships (a dependency of the
// services), so both sides read one version of them and npm brings no copy
// of googleapis.
//
// Each call has a deadline (--deadline-ms), so a client that would hang shows
// as DEADLINE_EXCEEDED with its time, instead of hanging the test.

import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

import crypto from "node:crypto";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const PROTOS = path.resolve(HERE, "..", "..", "protos");
const DETAILS_KEY = "grpc-status-details-bin";
const LONG = 20000;

const { values: args } = parseArgs({
  options: {
    target: { type: "string" },
    scenario: { type: "string" },
    "google-protos": { type: "string", default: process.env.SPINDLE_GOOGLE_PROTOS ?? "" },
    cwd: { type: "string", default: "" },
    token: { type: "string", default: "" },
    "deadline-ms": { type: "string", default: "10000" },
  },
});
const DEADLINE_MS = Number(args["deadline-ms"]);

function loadService() {
  // Our protos import google/api and google/rpc, from googleapis-common-protos.
  const definition = protoLoader.loadSync("spindle/v1/thread_service.proto", {
    includeDirs: [PROTOS, args["google-protos"]].filter(Boolean),
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).spindle.v1.ThreadService;
}

// google.rpc.Status and its detail messages, from googleapis-common-protos'
// .proto files; google/protobuf/{any,duration}.proto come with protobufjs.
function loadStatusTypes(dir) {
  if (!dir) {
    throw new Error("--google-protos (or SPINDLE_GOOGLE_PROTOS) must name the folder holding google/rpc/");
  }
  const root = new protobuf.Root();
  root.resolvePath = (origin, target) => (path.isAbsolute(target) ? target : path.join(dir, target));
  root.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"], { keepCase: true });
  return root;
}

const statusTypes = loadStatusTypes(args["google-protos"]);
const Status = statusTypes.lookupType("google.rpc.Status");

function decodeDetails(metadata) {
  const values = metadata ? metadata.get(DETAILS_KEY) : [];
  if (!values.length) {
    return {};
  }
  const status = Status.decode(values[0]);
  const out = { statusMessageLength: status.message.length, detailTypes: [] };
  for (const any of status.details) {
    const name = any.type_url.slice(any.type_url.lastIndexOf("/") + 1);
    out.detailTypes.push(name);
    const detail = statusTypes.lookupType(name).decode(any.value);
    if (name === "google.rpc.ErrorInfo") {
      out.errorInfo = { reason: detail.reason, domain: detail.domain, metadata: { ...detail.metadata } };
    } else if (name === "google.rpc.RetryInfo") {
      const delay = detail.retry_delay ?? {};
      out.retryDelaySeconds = Number(delay.seconds ?? 0) + (delay.nanos ?? 0) / 1e9;
    } else if (name === "google.rpc.BadRequest") {
      out.badRequest = detail.field_violations.map((v) => ({ field: v.field, description: v.description }));
    }
  }
  return out;
}

function outcome(label, method, started, error, extra = {}) {
  const ms = Math.round(performance.now() - started);
  if (!error) {
    return { label, method, code: 0, codeName: "OK", details: "", ms, ...extra };
  }
  const details = String(error.details ?? "");
  return {
    label,
    method,
    code: error.code,
    codeName: grpc.status[error.code] ?? String(error.code),
    details: details.slice(0, 300),
    detailsLength: details.length,
    ms,
    ...decodeDetails(error.metadata),
  };
}

function metadataFor(token) {
  const metadata = new grpc.Metadata();
  if (token) {
    metadata.set("authorization", `Bearer ${token}`);
  }
  return metadata;
}

function deadline() {
  return new Date(Date.now() + DEADLINE_MS);
}

// Every call resolves (never rejects) with what came back.
function unary(client, label, method, request, token = args.token) {
  const started = performance.now();
  return new Promise((resolve) => {
    client[method](request, metadataFor(token), { deadline: deadline() }, (error, response) => {
      const extra = {};
      if (!error && response?.thread) {
        extra.threadId = response.thread.id;
      }
      resolve(outcome(label, method, started, error, extra));
    });
  });
}

function runTurn(client, label, request, token = args.token) {
  const started = performance.now();
  return new Promise((resolve) => {
    const events = [];
    const call = client.RunTurn(request, metadataFor(token), { deadline: deadline() });
    call.on("data", (response) => events.push(...response.events.map((event) => event.kind)));
    call.on("error", (error) => resolve(outcome(label, "RunTurn", started, error, { events })));
    call.on("end", () => resolve(outcome(label, "RunTurn", started, null, { events })));
  });
}

function user(text) {
  return { message: { role: "ROLE_USER", text } };
}

// The kinds of characters a long value is made of: one byte each in UTF-8,
// two, three, four (outside the BMP), and control characters.
const KINDS = { ascii: "x", latin: "é", euro: "€", emoji: "😀", control: "\u0001" };

async function startThread(client) {
  if (!args.cwd) {
    throw new Error("this scenario needs --cwd: a folder the service may start a thread in");
  }
  const started = await unary(client, "start", "StartThread", { cwd: args.cwd });
  if (started.codeName !== "OK") {
    throw new Error(`StartThread failed: ${JSON.stringify(started)}`);
  }
  return started.threadId;
}

// Each field the issue names, 20,000 characters long, of each kind; after
// each, a plain call on the same client (the same connection) must work.
async function longValues(client) {
  const threadId = await startThread(client);
  const calls = [];
  for (const [kind, char] of Object.entries(KINDS)) {
    const long = char.repeat(LONG);
    const attempts = {
      thread_id: () => unary(client, `thread_id/${kind}`, "GetThread", { thread_id: long }),
      parent_id: () => unary(client, `parent_id/${kind}`, "SpawnThread", { parent_id: long }),
      cwd: () => unary(client, `cwd/${kind}`, "StartThread", { cwd: long }),
      cwd_absolute: () => unary(client, `cwd_absolute/${kind}`, "StartThread", { cwd: `/${long}` }),
      tool_name: () =>
        runTurn(client, `tool_name/${kind}`, {
          thread_id: threadId,
          input: [user("hi")],
          tools: [{ name: long, description: "", parameters_json: "" }],
        }),
      call_id: () =>
        runTurn(client, `call_id/${kind}`, {
          thread_id: threadId,
          input: [{ function_call_output: { call_id: long, output: "out" } }],
        }),
    };
    for (const [field, attempt] of Object.entries(attempts)) {
      calls.push(await attempt());
      calls.push(await unary(client, `after ${field}/${kind}`, "GetThread", { thread_id: threadId }));
    }
  }
  return calls;
}

// Without credentials, with a wrong token, then with the right one.
async function auth(client) {
  const probe = { thread_id: "00000000-0000-4000-8000-000000000000" };
  return [
    await unary(client, "no token", "GetThread", probe, ""),
    await unary(client, "wrong token", "GetThread", probe, "spx_not-a-valid-token"),
    await unary(client, "valid token", "GetThread", probe),
  ];
}

// Two calls in a row against a service that takes one call a minute.
async function rateLimit(client) {
  const probe = { thread_id: "00000000-0000-4000-8000-000000000000" };
  return [
    await unary(client, "first", "GetThread", probe),
    await unary(client, "second", "GetThread", probe),
  ];
}

// Errors that carry details: BadRequest (a field), NOT_FOUND, and the
// FAILED_PRECONDITION of a history past its limit (run against a service
// with a small --max-history-bytes): turns until one is refused.
async function details(client) {
  const threadId = await startThread(client);
  const calls = [
    await unary(client, "long nickname", "StartThread", { cwd: args.cwd, agent_nickname: "n".repeat(300) }),
    await unary(client, "unknown thread", "GetThread", { thread_id: "00000000-0000-4000-8000-000000000000" }),
  ];
  for (let index = 0; index < 50; index++) {
    const result = await runTurn(client, `turn ${index}`, { thread_id: threadId, input: [user("h".repeat(900))] });
    if (result.codeName !== "OK") {
      calls.push(result);
      break;
    }
  }
  calls.push(await unary(client, "after", "GetThread", { thread_id: threadId }));
  return calls;
}

// A model error whose message holds much of the caller's (non-ASCII) text.
async function modelError(client) {
  const threadId = await startThread(client);
  const calls = [];
  for (const [kind, char] of Object.entries({ euro: "€", emoji: "😀" })) {
    for (const [how, text] of Object.entries({ slow: "/slow ", fail: "/fail UNAVAILABLE " })) {
      calls.push(await runTurn(client, `${how}/${kind}`, { thread_id: threadId, input: [user(text + char.repeat(5000))] }));
      calls.push(await unary(client, `after ${how}/${kind}`, "GetThread", { thread_id: threadId }));
    }
  }
  return calls;
}

// Follows a turn after its connection dropped, and reads the v1 errors.
function watchTurn(client, label, request) {
  const started = performance.now();
  return new Promise((resolve) => {
    const events = [];
    const call = client.WatchTurn(request, metadataFor(args.token), { deadline: deadline() });
    call.on("data", (response) => events.push(...response.events.map(summary)));
    call.on("error", (error) => resolve(outcome(label, "WatchTurn", started, error, { events })));
    call.on("end", () => resolve(outcome(label, "WatchTurn", started, null, { events })));
  });
}

function summary(event) {
  const out = { sequence: Number(event.sequence), kind: event.kind };
  if (event.kind === "text_delta") out.text = event.text_delta.text;
  if (event.kind === "turn_started") out.turnId = event.turn_started.turn_id;
  if (event.kind === "turn_completed") out.status = event.turn_completed.status;
  return out;
}

// A turn whose connection drops after its first events: CONTINUE keeps it
// running; WatchTurn from the last sequence seen gets the rest.
async function v1(client) {
  const threadId = await startThread(client);
  const calls = [];
  const firstEvents = await new Promise((resolve) => {
    const seen = [];
    const call = client.RunTurn(
      {
        thread_id: threadId,
        input: [user("/slow 1 one two three four five six")],
        on_disconnect: "DISCONNECT_POLICY_CONTINUE",
        request_id: crypto.randomUUID(),
      },
      metadataFor(args.token),
      { deadline: deadline() },
    );
    call.on("data", (response) => {
      seen.push(...response.events.map(summary));
      if (seen.length >= 3) {
        call.cancel();
      }
    });
    call.on("error", () => resolve(seen));
    call.on("end", () => resolve(seen));
  });
  calls.push({ label: "dropped", method: "RunTurn", code: 0, codeName: "OK", events: firstEvents });
  const turnId = firstEvents[0].turnId;
  const after = firstEvents[firstEvents.length - 1].sequence;
  calls.push(await watchTurn(client, "watch", { thread_id: threadId, turn_id: turnId, after_sequence: after }));
  calls.push(await unary(client, "interrupt ended", "InterruptTurn", { thread_id: threadId, turn_id: turnId }));
  calls.push(await unary(client, "fork without call id", "SpawnThread", { parent_id: threadId, fork: {} }));
  const requestId = crypto.randomUUID();
  calls.push(await unary(client, "first start", "StartThread", { cwd: args.cwd, request_id: requestId }));
  calls.push(await unary(client, "reused id", "StartThread", { cwd: args.cwd, request_id: requestId, model: "other" }));
  return calls;
}

const SCENARIOS = {
  v1,
  "long-values": longValues,
  auth,
  "rate-limit": rateLimit,
  details,
  "model-error": modelError,
};

async function main() {
  const scenario = SCENARIOS[args.scenario];
  if (!args.target || !scenario) {
    console.error(`usage: client.mjs --target HOST:PORT --scenario (${Object.keys(SCENARIOS).join("|")})`);
    process.exit(2);
  }
  const ThreadService = loadService();
  const client = new ThreadService(args.target, grpc.credentials.createInsecure());
  const started = performance.now();
  const calls = await scenario(client);
  client.close();
  const result = { scenario: args.scenario, ms: Math.round(performance.now() - started), calls };
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

await main();
