// Interop: matrix-js-sdk schedules a delayed message with its MSC4140 API and
// receives it through its own sync when the server sends it.
//
// Usage: node js_delayed_events.mjs <homeserver base URL> <node_modules dir>
// Prints "interop ok" and exits 0 on success.

import path from "node:path";
import { pathToFileURL } from "node:url";

// matrix-js-sdk 43 uses Promise.withResolvers, which Node 20 lacks.
if (!Promise.withResolvers) {
  Promise.withResolvers = function () {
    let resolve, reject;
    const promise = new this((a, b) => { resolve = a; reject = b; });
    return { promise, resolve, reject };
  };
}

const [base, modules] = process.argv.slice(2);
const sdk = await import(pathToFileURL(path.join(modules, "matrix-js-sdk", "lib", "index.js")).href);
const { createClient, ClientEvent, RoomEvent, MsgType } = sdk;

const DELAY_MS = 1500;
const BODY = "delayed hello from matrix-js-sdk";

function withTimeout(promise, ms, what) {
  return Promise.race([
    promise,
    new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms)),
  ]);
}

async function register(username) {
  const response = await fetch(`${base}/_matrix/client/v3/register`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ username, password: "interop password 2", auth: { type: "m.login.dummy" } }),
  });
  if (!response.ok) throw new Error(`register: ${response.status} ${await response.text()}`);
  return response.json();
}

const account = await register("jsalice");
const client = createClient({
  baseUrl: base,
  accessToken: account.access_token,
  userId: account.user_id,
  deviceId: account.device_id,
});
const { room_id: roomId } = await client.createRoom({ name: "delayed" });
const prepared = new Promise((resolve) => client.once(ClientEvent.Sync, resolve));
await client.startClient({ initialSyncLimit: 10 });
await withTimeout(prepared, 20000, "the first sync");

const arrived = new Promise((resolve) =>
  client.on(RoomEvent.Timeline, (event, room, toStartOfTimeline, _removed, data) => {
    if (room?.roomId === roomId && !toStartOfTimeline && data?.liveEvent &&
        event.getType() === "m.room.message" && event.getContent().body === BODY) {
      resolve(event);
    }
  }),
);
const scheduledAt = Date.now();
const { delay_id: delayId } = await client._unstable_sendDelayedEvent(
  roomId, { delay: DELAY_MS }, null, "m.room.message", { msgtype: MsgType.Text, body: BODY },
);
if (typeof delayId !== "string") throw new Error("no delay_id");
const event = await withTimeout(arrived, 20000, "the delayed message");
const elapsed = Date.now() - scheduledAt;
client.stopClient();
if (elapsed < DELAY_MS - 100) throw new Error(`sent too early: ${elapsed} ms`);
if (event.getSender() !== account.user_id) throw new Error(`wrong sender ${event.getSender()}`);
console.log(`interop ok: delayed message ${delayId} arrived through sync after ${elapsed} ms`);
process.exit(0);
