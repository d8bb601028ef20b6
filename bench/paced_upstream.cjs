// The paced half of the benchmark's fake upstream: the same 22-event stream as the SSE burst, but
// one event every GAP_MS milliseconds, as an LLM streams tokens (10 ms = 100 tokens/s, a fast
// model). bench/run.py starts it on the machine's Node.js and the fake nginx upstream passes
// /paced/* to it, so every configuration reaches it at the same upstream address.
//
//   node bench/paced_upstream.cjs PORT GAP_MS EVENTS.json     (EVENTS.json: the events, in order)
//
// Cheap by construction (one process, one timer per open stream, no parsing): at 64 streams and
// 10 ms it writes ~6,000 events/s on ~16 % of one core, so the pacing is what limits.
// Request bodies are read and discarded. Listens on 127.0.0.1 only.
"use strict";
const fs = require("fs");
const http = require("http");

const [port, gapArg, eventsFile] = process.argv.slice(2);
const gap = Number(gapArg);
const events = JSON.parse(fs.readFileSync(eventsFile, "utf8")).map((e) => Buffer.from(e));
if (!(gap >= 0) || events.length === 0) {
  console.error("usage: paced_upstream.cjs PORT GAP_MS EVENTS.json");
  process.exit(2);
}

const server = http.createServer({ noDelay: true, keepAliveTimeout: 120000 }, (req, res) => {
  req.resume(); // read and discard the request body
  req.on("end", () => {
    res.writeHead(200, { "Content-Type": "text/event-stream", "Cache-Control": "no-cache" });
    let i = 0;
    let timer = null;
    const next = () => {
      timer = null;
      res.write(events[i++]);
      if (i >= events.length) {
        res.end();
      } else {
        timer = setTimeout(next, gap);
      }
    };
    res.on("close", () => timer && clearTimeout(timer));
    next(); // the first event at once; then one every `gap` ms
  });
});
server.keepAliveTimeout = 120000; // longer than nginx's upstream keep-alive (60 s)
server.headersTimeout = 130000;
server.listen(Number(port), "127.0.0.1");
for (const sig of ["SIGTERM", "SIGINT"]) process.on(sig, () => process.exit(0));
