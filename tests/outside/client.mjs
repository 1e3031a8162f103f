// A round trip against the real zimage-mcp server through the official TypeScript SDK client
// (@modelcontextprotocol/sdk, the client inside most hosts), exactly as a host would drive it.
//
//   node client.mjs stdio -- <command> [args...]   spawn the server over stdio (the environment is passed on)
//   node client.mjs http <url>                     talk to a running daemon over streamable HTTP;
//                                                  ZIMAGE_MCP_TOKEN, when set, is sent as a Bearer token
//
// Options (before the transport): --size N (default 256), --steps N (default 2), --timeout-ms N (per request,
// default 60000), --deadline-ms N (whole run, default 150000).
// stdout carries one JSON summary: {ok, transport, checks: [{name, ok, detail}], failed: [names], ...}.
// Exit status: 0 when every check passed, 1 when any failed, 2 on bad usage, 3 when the deadline passed.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { CallToolResultSchema, McpError } from "@modelcontextprotocol/sdk/types.js";

const PNG_MAGIC = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
const EXPECTED_TOOLS = ["generate_image", "edit_image", "list_models", "get_job", "cancel_job"];

function usage(message) {
  process.stderr.write(`${message}\nusage: node client.mjs [--size N] [--steps N] [--timeout-ms N] [--deadline-ms N] `
    + "stdio -- <command> [args...] | http <url>\n");
  process.exit(2);
}

function parseArgs(argv) {
  const opts = { size: 256, steps: 2, timeoutMs: 60000, deadlineMs: 150000 };
  const names = { "--size": "size", "--steps": "steps", "--timeout-ms": "timeoutMs", "--deadline-ms": "deadlineMs" };
  let i = 0;
  while (i < argv.length && names[argv[i]]) {
    const value = Number(argv[i + 1]);
    if (!Number.isInteger(value) || value <= 0) usage(`${argv[i]} needs a positive integer`);
    opts[names[argv[i]]] = value;
    i += 2;
  }
  opts.transport = argv[i];
  if (opts.transport === "stdio") {
    if (argv[i + 1] !== "--" || argv.length < i + 3) usage("stdio needs -- <command> [args...]");
    opts.command = argv[i + 2];
    opts.args = argv.slice(i + 3);
  } else if (opts.transport === "http") {
    if (argv.length !== i + 2) usage("http needs exactly one URL");
    opts.url = argv[i + 1];
  } else {
    usage(`unknown transport ${JSON.stringify(opts.transport)}`);
  }
  return opts;
}

const opts = parseArgs(process.argv.slice(2));
const summary = { ok: false, transport: opts.transport, checks: [], failed: [] };

function check(name, ok, detail = undefined) {
  summary.checks.push({ name, ok: Boolean(ok), ...(detail === undefined ? {} : { detail }) });
  if (!ok) summary.failed.push(name);
  return Boolean(ok);
}

function finish(code) {
  summary.ok = code === 0 && summary.failed.length === 0;
  process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
  process.exit(code === 0 && !summary.ok ? 1 : code);
}

function text(result) {
  return (result?.content ?? []).filter((b) => b.type === "text").map((b) => b.text).join("\n");
}

function errorText(err) {
  return err instanceof McpError ? `McpError ${err.code}: ${err.message}` : String(err?.stack ?? err);
}

// Run one step; an exception is a failed check named after the step, and the run goes on.
async function step(name, fn) {
  try {
    return await fn();
  } catch (err) {
    check(name, false, errorText(err));
    return undefined;
  }
}

function makeTransport() {
  if (opts.transport === "stdio") {
    // Pass the whole environment on: the SDK otherwise keeps only HOME, PATH and a few others, and the
    // server reads its configuration (ZIMAGE_MCP_REGISTRY, ...) from the environment.
    return new StdioClientTransport({ command: opts.command, args: opts.args, env: { ...process.env }, stderr: "inherit" });
  }
  const headers = {};
  if (process.env.ZIMAGE_MCP_TOKEN) headers.Authorization = `Bearer ${process.env.ZIMAGE_MCP_TOKEN}`;
  return new StreamableHTTPClientTransport(new URL(opts.url), { requestInit: { headers } });
}

async function callTool(client, name, args, extra = {}) {
  return client.callTool({ name, arguments: args }, CallToolResultSchema,
    { timeout: opts.timeoutMs, resetTimeoutOnProgress: true, maxTotalTimeout: opts.deadlineMs, ...extra });
}

async function main() {
  const client = new Client({ name: "zimage-mcp-outside-client", version: "1.0.0" }, { capabilities: {} });
  const transport = makeTransport();
  try {
    await step("initialize", async () => {
      await client.connect(transport, { timeout: opts.timeoutMs });
      const info = client.getServerVersion();
      summary.server = info;
      summary.protocol_version = transport.protocolVersion ?? null;
      check("initialize", info?.name === "zimage-mcp" && client.getServerCapabilities()?.tools,
        { serverInfo: info, capabilities: client.getServerCapabilities() });
    });
    if (summary.failed.length) return;

    await step("list_tools", async () => {
      const { tools } = await client.listTools(undefined, { timeout: opts.timeoutMs });
      const names = tools.map((t) => t.name);
      const gen = tools.find((t) => t.name === "generate_image");
      check("list_tools", EXPECTED_TOOLS.every((n) => names.includes(n)) && gen?.outputSchema, { tools: names });
    });

    // generate_image with a progress token: the SDK puts _meta.progressToken on the request when onprogress
    // is given, and routes notifications/progress carrying that token to it.
    const progress = [];
    const generated = await step("generate_image", async () => {
      const t0 = Date.now();
      const result = await callTool(client, "generate_image",
        { prompt: "a lighthouse on a cliff", width: opts.size, height: opts.size, steps: opts.steps, seed: 7 },
        { onprogress: (p) => progress.push(p) });
      const images = result.structuredContent?.images ?? [];
      check("generate_image", !result.isError && images.length === 1 && images[0].id,
        { seconds: (Date.now() - t0) / 1000, isError: result.isError ?? false, text: text(result).slice(0, 300),
          content_types: (result.content ?? []).map((b) => b.type), images });
      return result;
    });
    const values = progress.map((p) => p.progress);
    check("progress_notifications",
      progress.length > 0 && values.every((v, i) => i === 0 || v >= values[i - 1]),
      { count: progress.length, values, total: progress.at(-1)?.total ?? null, last_message: progress.at(-1)?.message ?? null });
    summary.progress = progress.length;

    const imageId = generated?.structuredContent?.images?.[0]?.id;
    if (imageId) {
      await step("read_resource", async () => {
        const uri = `zimage://images/${imageId}`;
        const read = await client.readResource({ uri }, { timeout: opts.timeoutMs });
        const item = read.contents?.[0];
        const bytes = item?.blob ? Buffer.from(item.blob, "base64") : Buffer.alloc(0);
        check("read_resource", item?.uri === uri && item?.mimeType === "image/png" && bytes.subarray(0, 8).equals(PNG_MAGIC),
          { uri: item?.uri, mimeType: item?.mimeType, bytes: bytes.length });
      });

      await step("edit_image", async () => {
        const result = await callTool(client, "edit_image",
          { image: imageId, prompt: "the same lighthouse at night", steps: opts.steps, seed: 8 });
        const images = result.structuredContent?.images ?? [];
        check("edit_image", !result.isError && images.length === 1 && images[0].id && images[0].id !== imageId,
          { isError: result.isError ?? false, text: text(result).slice(0, 300), images, mode: result.structuredContent?.mode ?? null });
      });
    } else {
      check("read_resource", false, "no image id from generate_image");
      check("edit_image", false, "no image id from generate_image");
    }

    // A misspelled argument must be refused, and the error must name the bad field: a user who typed
    // "widht" has to learn that, not get a default-sized image.
    await step("misspelled_argument_refused", async () => {
      const args = { prompt: "x", widht: 512 };
      let refusal = null;
      let result = null;
      try {
        result = await callTool(client, "generate_image", args);
        if (result.isError) refusal = text(result);
      } catch (err) {
        refusal = errorText(err);
      }
      check("misspelled_argument_refused", refusal !== null && refusal.includes("widht"),
        { sent: args, refusal, ...(refusal === null ? { got: { isError: result?.isError ?? false, text: text(result).slice(0, 300) } } : {}) });
    });
  } finally {
    await client.close().catch(() => {});
  }
}

const deadline = setTimeout(() => {
  check("deadline", false, `the run took longer than ${opts.deadlineMs} ms`);
  finish(3);
}, opts.deadlineMs);

main().then(
  () => { clearTimeout(deadline); finish(0); },
  (err) => { clearTimeout(deadline); check("unexpected", false, errorText(err)); finish(1); },
);
