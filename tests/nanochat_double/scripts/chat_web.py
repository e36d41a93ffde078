"""TEST DOUBLE of nanochat's scripts/chat_web.py (seed only; FastAPI + uvicorn upstream).

Loads the -i checkpoint once per worker (-n, default 1) at startup, then serves on --host/--port
(default 0.0.0.0:8000) until SIGTERM/SIGINT, with upstream's routes: GET / (nanochat/ui.html read
from the cwd, <title>NanoChat</title>), GET /logo.svg, POST /chat/completions (server-sent events:
`data: {"token": ..., "gpu": 0}` ... `data: {"done": true}`), GET /health, GET /stats.
Uvicorn-style INFO lines go to stderr, access lines to stdout. Standard library only.
"""
import datetime
import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the double's root
import nanochat_double_fake as F  # noqa: E402
import nanochat_double_io as IO  # noqa: E402
import nanochat_double_support as S  # noqa: E402

ctx = S.start("scripts/chat_web.py", description="NanoChat Web Server")
a = ctx.args
ctx.qualifier = a.source
device_type = ctx.compute_init(a.device_type)
ROUTES = {"/": "GET", "/logo.svg": "GET", "/health": "GET", "/stats": "GET", "/chat/completions": "POST"}


def info(message):
    print(f"INFO:     {message}", file=sys.stderr, flush=True)


def log(message):
    print(f"{datetime.datetime.now():%Y-%m-%d %H:%M:%S} - {message}", file=sys.stderr, flush=True)


def validate(body):
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list):
        return 422, {"detail": [{"type": "missing", "loc": ["body", "messages"], "msg": "Field required"}]}
    if not messages:
        return 400, {"detail": "At least one message is required"}
    for i, message in enumerate(messages):
        if not message.get("content"):
            return 400, {"detail": f"Message {i} has empty content"}
        if message.get("role") not in ("user", "assistant"):
            return 400, {"detail": f"Message {i} has invalid role. Must be 'user', 'assistant', or 'system'"}
    return 200, None


class Handler(BaseHTTPRequestHandler):
    def log_message(self, fmt, *args):  # uvicorn's access log format, on stdout
        pass

    def _access(self, status):
        phrase = self.responses.get(status, ("",))[0]
        print(f'INFO:     {self.client_address[0]}:{self.client_address[1]} - "{self.command} {self.path} '
              f'{self.request_version}" {status} {phrase}', flush=True)

    def _send(self, status, body, ctype="application/json"):
        data = json.dumps(body).encode() if ctype == "application/json" else body
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self._access(status)

    def _route(self, method):
        path = self.path.split("?")[0]
        if path not in ROUTES:
            return self._send(404, {"detail": "Not Found"})
        if ROUTES[path] != method:
            return self._send(405, {"detail": "Method Not Allowed"})
        if path in ("/", "/logo.svg"):
            name = "ui.html" if path == "/" else "logo.svg"
            try:  # upstream reads it relative to the cwd: the server must run in the checkout root
                with open(os.path.join("nanochat", name), "rb") as f:
                    content = f.read()
            except OSError:
                return self._send(500, b"Internal Server Error", "text/plain; charset=utf-8")
            if path == "/":
                content = content.replace(b"const API_URL = `http://${window.location.hostname}:8000`;",
                                          b"const API_URL = '';")
            return self._send(200, content, "text/html; charset=utf-8" if path == "/" else "image/svg+xml")
        if path == "/health":
            return self._send(200, {"status": "ok", "ready": True, "num_gpus": a.num_gpus, "available_workers": a.num_gpus})
        if path == "/stats":
            workers = [{"gpu_id": i, "device": f"cuda:{i}" if device_type == "cuda" else device_type} for i in range(a.num_gpus)]
            return self._send(200, {"total_workers": a.num_gpus, "available_workers": a.num_gpus, "busy_workers": 0,
                                    "workers": workers})
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")
        except ValueError:
            return self._send(422, {"detail": [{"type": "json_invalid", "msg": "JSON decode error"}]})
        status, error = validate(body)
        if error:
            return self._send(status, error)
        log("=" * 20)
        for message in body["messages"]:
            log(f"[{message['role'].upper()}]: {message['content']}")
        log("-" * 20)
        text = F.reply(body["messages"][-1]["content"])
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.end_headers()
        for i, word in enumerate(text.split(" ")):
            chunk = {"token": word if i == 0 else " " + word, "gpu": 0}
            self.wfile.write(f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b'data: {"done": true}\n\n')
        self._access(200)
        log(f"[ASSISTANT] (GPU 0): {text}")
        log("=" * 20)

    def do_GET(self):
        self._route("GET")

    def do_POST(self):
        self._route("POST")


def stop(signum, frame):
    raise KeyboardInterrupt  # uvicorn shuts down gracefully on SIGINT and SIGTERM


def main():
    print("Starting NanoChat Web Server", flush=True)
    ctx.maybe_hang()
    print(f"Temperature: {a.temperature}, Top-k: {a.top_k}, Max tokens: {a.max_tokens}", flush=True)
    ctx.fail_point()
    pid = os.getpid()
    info(f"Started server process [{pid}]")
    info("Waiting for application startup.")
    print("Loading nanochat models across GPUs...", flush=True)
    print(f"Initializing worker pool with {a.num_gpus} GPUs...", flush=True)
    if a.num_gpus > 1:
        assert device_type == "cuda", "Only CUDA supports multiple workers/GPUs. cpu|mps does not."
    for gpu_id in range(a.num_gpus):
        print(f"Loading model on GPU {gpu_id}..." if device_type == "cuda" else f"Loading model on {device_type}...", flush=True)
        IO.find_model(ctx, a.source, a.model_tag, a.step)
    print(f"All {a.num_gpus} workers initialized!", flush=True)
    print(f"Server ready at http://localhost:{a.port}", flush=True)
    info("Application startup complete.")
    signal.signal(signal.SIGTERM, stop)
    try:
        ThreadingHTTPServer.allow_reuse_address = True
        server = ThreadingHTTPServer((a.host, a.port), Handler)
    except OSError as e:
        print(f"ERROR:    [Errno {e.errno}] error while attempting to bind on address ({a.host!r}, {a.port}): "
              f"{(e.strerror or '').lower()}", file=sys.stderr, flush=True)
        info("Waiting for application shutdown.")
        info("Application shutdown complete.")
        sys.exit(1)
    info(f"Uvicorn running on http://{a.host}:{a.port} (Press CTRL+C to quit)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    server.server_close()
    for line in ("Shutting down", "Waiting for application shutdown.", "Application shutdown complete.",
                 f"Finished server process [{pid}]"):
        info(line)


if __name__ == "__main__":
    main()
