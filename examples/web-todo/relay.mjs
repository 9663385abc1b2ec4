// Starts and stops a concord-relay process for the demo and its tests.
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { join } from "node:path";

/**
 * Starts `bin` listening on `listen` with its data in `data` (the relay
 * creates its signing key there on first start). Resolves once it prints
 * `concord-relay listening on ADDR`, to `{ addr, url, keyFile, child, stop }`.
 */
export function startRelay({ bin, listen = "127.0.0.1:8787", data, log = false }) {
  // The relay reads CONCORD_* settings from the environment: keep ours out.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("CONCORD_")));
  const child = spawn(bin, ["--listen", listen, "--data", data], { stdio: ["ignore", "pipe", "pipe"], env });
  let stderr = "";
  child.stderr.on("data", (chunk) => {
    if (log) process.stderr.write(chunk);
    else stderr = (stderr + chunk).slice(-4000);
  });
  return new Promise((resolve, reject) => {
    child.once("error", (e) => reject(new Error(`cannot start ${bin}: ${e.message}`)));
    child.once("exit", (code, signal) => reject(new Error(`concord-relay exited (${code ?? signal}) before listening:\n${stderr}`)));
    const lines = createInterface({ input: child.stdout });
    lines.once("line", (line) => {
      const m = /^concord-relay listening on (\S+)/.exec(line);
      if (!m) return reject(new Error(`unexpected relay output: ${line}`));
      child.removeAllListeners("exit");
      const exited = new Promise((r) => child.once("exit", r));
      resolve({
        addr: m[1],
        url: `ws://${m[1]}/v1/sync`,
        keyFile: join(data, "concord-relay.key"),
        child,
        /** Sends `signal` and resolves once the process is gone. */
        async stop(signal = "SIGTERM") {
          if (child.exitCode === null && child.signalCode === null) child.kill(signal);
          await exited;
        },
      });
    });
  });
}
