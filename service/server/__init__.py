"""Where the router reaches into Sanic's internals, one module per bypass.

Each module says what it buys, what it copies or relies on (what an upgrade of Sanic can break)
and which test holds it to Sanic's own behaviour:

- `dispatch`: `RouterApp`, the hot lifecycle signals called without the signal router (a fast
  path: `API_ROUTER_FAST_PATHS` without `dispatch` serves with Sanic's own dispatch);
- `stream_write`: `ChunkWriter`, an SSE relay's pieces written straight to the client's
  transport from the upstream connection's callback (a fast path: without `stream`, the
  relay's task writes each through `response.send`);
- `response_head`: Sanic's response-header sanitiser skipped for text with no control
  character (a fast path: without `head`, Sanic's own method does every call);
- `protocol`: `GuardedHttpProtocol`, total head/body deadlines and a connection cap;
- `shutdown`: what SIGTERM does (listening sockets closed at once, idle connections closed);
- `manager`: the worker manager stops waiting for start-up acknowledgements once shutting down;
- `body`: a streamed request body's size limit and remaining chunks (the multipart routes).

The last four are behaviour, not speed: they are always on.
"""
