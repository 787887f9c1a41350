#!/usr/bin/env node
// Spindle from Node.js: start a thread, run a turn, fork the thread, run a
// turn on the fork, printing the model's text as it streams and each turn's
// token usage.
//
//   SPINDLE_TARGET      the thread-service (default 127.0.0.1:50051)
//   SPINDLE_TOKEN       a bearer token, when the service requires one
//   SPINDLE_TLS_CA      a PEM CA file: set, the connection uses TLS
//   SPINDLE_PROTO_DEPS  the folder holding google/api and google/rpc protos
//                       (default: build/proto-deps in this repository)
//
// The service's .proto files are loaded from protos/ as they are. They import
// two googleapis files, which scripts/generate_protos.py stages:
//   .venv/bin/python scripts/generate_protos.py --stage-imports build/proto-deps

import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const TARGET = process.env.SPINDLE_TARGET || "127.0.0.1:50051";
const TOKEN = process.env.SPINDLE_TOKEN || "";
const TLS_CA = process.env.SPINDLE_TLS_CA || "";
const PROTO_DEPS = process.env.SPINDLE_PROTO_DEPS || path.join(REPO, "build", "proto-deps");

function loadThreadService() {
  if (!fs.existsSync(path.join(PROTO_DEPS, "google", "rpc", "status.proto"))) {
    throw new Error(
      `${PROTO_DEPS} has no google/rpc/status.proto: run ` +
        "`.venv/bin/python scripts/generate_protos.py --stage-imports build/proto-deps` " +
        "or set SPINDLE_PROTO_DEPS",
    );
  }
  const definition = protoLoader.loadSync("spindle/v1/thread_service.proto", {
    includeDirs: [path.join(REPO, "protos"), PROTO_DEPS],
    keepCase: true, // field names as the .proto spells them: thread_id, prompt_cache_key
    longs: Number, // token counts as plain numbers
    enums: String, // enum values by name: "ROLE_USER", "TURN_STATUS_COMPLETED"
    defaults: true, // unset fields read as their defaults
    oneofs: true, // event.kind names the oneof member that is set
  });
  return grpc.loadPackageDefinition(definition).spindle.v1.ThreadService;
}

function connect() {
  const ThreadService = loadThreadService();
  const credentials = TLS_CA
    ? grpc.credentials.createSsl(fs.readFileSync(TLS_CA))
    : grpc.credentials.createInsecure();
  return new ThreadService(TARGET, credentials);
}

// Every call carries the token as `authorization: Bearer TOKEN` metadata.
function metadata() {
  const result = new grpc.Metadata();
  if (TOKEN) {
    result.set("authorization", `Bearer ${TOKEN}`);
  }
  return result;
}

// A unary call as a promise, with a deadline.
function call(client, method, request) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + 30_000);
    client[method](request, metadata(), { deadline }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

// Runs one turn with a user message. The model's text is written as each
// delta arrives; resolves with the turn_completed event.
function runTurn(client, threadId, text) {
  console.log(`you: ${text}`);
  return new Promise((resolve, reject) => {
    let completed = null;
    const input = [{ message: { role: "ROLE_USER", text } }];
    const stream = client.RunTurn({ thread_id: threadId, input }, metadata());
    stream.on("data", (response) => {
      // Events that were ready together arrive in one response.
      for (const event of response.events) {
        if (event.kind === "text_delta") {
          process.stdout.write(event.text_delta.text);
        } else if (event.kind === "turn_completed") {
          completed = event.turn_completed;
        }
      }
    });
    stream.on("error", reject);
    stream.on("end", () => {
      process.stdout.write("\n");
      resolve(completed);
    });
  });
}

function report(completed) {
  const status = completed.status.replace("TURN_STATUS_", "").toLowerCase();
  const { input_tokens, cached_input_tokens, output_tokens } = completed.usage;
  console.log(
    `  ${status}: ${input_tokens} input tokens (${cached_input_tokens} cached), ` +
      `${output_tokens} output tokens`,
  );
}

async function main(client) {
  // A root thread, working in this directory (the service must be able to see it).
  const { thread: parent } = await call(client, "StartThread", { cwd: process.cwd() });
  console.log(`started thread ${parent.id} (prompt_cache_key ${parent.prompt_cache_key})`);
  report(await runTurn(client, parent.id, "Hello from Node.js"));

  // A fork inherits the parent's history and its prompt cache key, so its
  // model calls keep hitting the provider's cache for the shared prefix.
  const fork = { parent_spawn_call_id: `call_quickstart_${Date.now()}` };
  const { thread: child } = await call(client, "SpawnThread", { parent_id: parent.id, fork });
  console.log(`forked thread ${child.id} (prompt_cache_key ${child.prompt_cache_key})`);
  report(await runTurn(client, child.id, "And hello from the fork"));
}

let client = null;
try {
  client = connect();
  await main(client);
} catch (error) {
  // A gRPC error names its status; details is the service's message.
  const code = typeof error.code === "number" ? `${grpc.status[error.code]}: ` : "";
  console.error(`quickstart: ${code}${error.details ?? error.message}`);
  process.exitCode = 1;
} finally {
  client?.close();
}
