// Peer for bench/ingest.sh: what a hand-written Express-style handler does.
// Verifies X-Hub-Signature-256 with @octokit/webhooks-methods and answers
// 202. With FSYNC=1 it appends each event to a file and fsyncs before
// answering (the durability hookgate gives), one fsync per request.
import http from "node:http";
import fs from "node:fs";
import { verify } from "@octokit/webhooks-methods";

const secret = fs.readFileSync(process.env.SECRET_FILE, "utf8");
const port = Number(process.env.PORT);
const fsync = process.env.FSYNC === "1";
const fd = fsync ? fs.openSync(process.env.LOG_FILE, "a") : null;

http
  .createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", async () => {
      const body = Buffer.concat(chunks).toString("utf8");
      const ok = await verify(secret, body, req.headers["x-hub-signature-256"] || "");
      if (!ok) {
        res.writeHead(401).end();
        return;
      }
      JSON.parse(body);
      if (fsync) {
        fs.writeSync(fd, req.headers["x-github-delivery"] + "\t" + body + "\n");
        fs.fsyncSync(fd);
      }
      res.writeHead(202, { "content-type": "application/json" });
      res.end('{"status":"queued"}');
    });
  })
  .listen(port, "127.0.0.1");
