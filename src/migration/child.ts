/**
 * The migration library's own process entry (local.ts forks it): a destination
 * (migrateIncoming) or a whole local migration (migrateLocal), asked for over IPC, the result
 * sent back over IPC. It runs nothing until its request comes.
 */
import { migrateIncoming } from "./migrate.js";
import { migrateLocal, ChildReply, ChildRequest } from "./local.js";

function send(m: ChildReply): Promise<void> {
  return new Promise((res) => process.send!(m, undefined, {}, () => res()));
}

async function serve(req: ChildRequest): Promise<void> {
  try {
    if (req.role === "incoming") {
      const result = await migrateIncoming({
        ...req.options,
        onListening: (port) => void send({ type: "listening", port }),
      });
      await send({ type: "incoming", result });
    } else {
      const result = await migrateLocal(req.options);
      await send({ type: "local", result });
    }
  } catch (e) {
    const c = (e as { code?: unknown } | null)?.code;
    const code = typeof c === "string" ? c : "EIO";
    const msg = e instanceof Error ? e.message : String(e);
    // Led by its code once: KvmError's and MigrationError's messages are already.
    await send({ type: "error", code, message: msg.startsWith(`${code}: `) ? msg : `${code}: ${msg}` });
    process.exitCode = 1;
  }
  // The process ends on its own, as a CLI command does: process.exit() here would drop its
  // sockets at once, and a source still writing would lose the error section it was sent
  // (the kernel resets a connection closed with unread data).
  process.disconnect();
}

if (process.send) process.once("message", (req: ChildRequest) => void serve(req));
