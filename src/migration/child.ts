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
    process.exit(0);
  } catch (e) {
    const c = (e as { code?: unknown } | null)?.code;
    const code = typeof c === "string" ? c : "EIO";
    await send({ type: "error", code, message: e instanceof Error ? e.message : String(e) });
    process.exit(1);
  }
}

if (process.send) process.once("message", (req: ChildRequest) => void serve(req));
