// Preloaded into the Portkey gateway (node --require): its server listens on every interface and
// has no option for the address; the benchmark must stay on loopback, so listen() is pinned here.
"use strict";
const net = require("net");
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === "object" && args[0] !== null && !Array.isArray(args[0])) {
    args[0] = { ...args[0], host: "127.0.0.1" };
  } else if (typeof args[0] === "number" || typeof args[0] === "string") {
    const port = args.shift();
    const rest = typeof args[0] === "string" ? args.slice(1) : args;
    args = [port, "127.0.0.1", ...rest];
  }
  return listen.apply(this, args);
};
