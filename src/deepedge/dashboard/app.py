"""The dashboard's web app: HTML pages that work without JavaScript, and the JSON they poll.

Each page is rendered on the server with its numbers in tables, so it is readable with
JavaScript off; with it on, ``dashboard.js`` polls the page's ``/api/...`` JSON every
second (live within 2 s), asking only for what is new after the first answer, fills
the same cells and draws the series with plotly.js, which is served from the ``plotly``
package (no CDN at run time).

Security (see :func:`check_bind`):

* every request but ``/healthz`` needs the token when one is set: ``Authorization:
  Bearer <token>``, or ``?token=`` once (it is then kept in an HttpOnly cookie); 401
  otherwise;
* the app is read-only: any method but GET and HEAD is refused with 403 unless it was
  created with ``allow_control`` (nothing on the page can change the cluster without it).
  Its one action then adds a device to the cluster spec a running job watches
  (``POST /api/control/devices``, JSON only, same origin only).
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, PackageLoader, select_autoescape

from deepedge.catalog import CATALOG
from deepedge.dashboard.sources import Sources
from deepedge.errors import DeepEdgeError, UsageError

__all__ = ["PAGES", "check_bind", "create_app"]

PAGES = {
    "cluster": "Cluster",
    "apps": "LC apps",
    "training": "Training",
    "events": "Events",
    "serving": "Serving",
    "kb": "Knowledge base",
    "runs": "Past runs",
}
COOKIE = "deepedge_dashboard_token"
KINDS = sorted(CATALOG)
DEVICE_FIELDS = ("name", "kind", "cpu_cores", "memory_mb", "reserved_mb", "link_mbps")
INCREMENTAL = ("cluster", "apps", "training", "serving")
"""Pages whose JSON can be asked for only what is new (``?since=``)."""


def check_bind(host: str, token: str | None) -> str | None:
    """The token a server bound to ``host`` needs: none on loopback unless given; on any
    other address the one given, or a new random one (the caller prints it)."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if token is not None and len(token) < 16:
        raise UsageError("a dashboard token needs at least 16 characters")
    if loopback:
        return token
    return token or secrets.token_urlsafe(24)


def _plotly_js() -> Path:
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def create_app(
    sources: Sources,
    *,
    token: str | None = None,
    allow_control: bool = False,
    spec: Path | None = None,
) -> FastAPI:
    """The dashboard over ``sources``; see the module doc for ``token`` and
    ``allow_control``. ``spec``: the cluster spec file a running job watches, which the
    control adds devices to."""
    app = FastAPI(title="deepedge dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    templates = Environment(
        loader=PackageLoader("deepedge.dashboard", "templates"),
        autoescape=select_autoescape(["html"]),
    )
    templates.filters["num"] = _num
    templates.filters["clock"] = _clock
    static = resources.files("deepedge.dashboard") / "static"
    plotly_js = _plotly_js()

    @app.get("/static/vendor/plotly.min.js")
    def plotly() -> FileResponse:  # the one file of the plotly package the page needs
        return FileResponse(plotly_js, headers={"Cache-Control": "max-age=86400"})

    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]):
        if request.url.path == "/healthz":
            return await call_next(request)
        if token is None and _hostname(request.headers.get("host")) not in LOOPBACK_NAMES:
            # without a token only loopback is served, and only under loopback names: a
            # page whose own name was made to resolve to 127.0.0.1 (DNS rebinding) is not
            return PlainTextResponse("403: unknown host for a loopback dashboard", 403)
        if token is not None:
            given = _token_of(request)
            if given is None or not hmac.compare_digest(given.encode(), token.encode()):
                return PlainTextResponse(
                    "401: this dashboard needs its token (the one printed at start): "
                    "open it with ?token=... or send Authorization: Bearer ...",
                    status_code=401,
                )
        if request.method not in ("GET", "HEAD") and not allow_control:
            return PlainTextResponse(
                "403: this dashboard is read-only; start it with --allow-control to act",
                status_code=403,
            )
        response = await call_next(request)
        if token is not None and request.query_params.get("token") == token:
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return response

    @app.exception_handler(DeepEdgeError)
    async def one_line(request: Request, err: DeepEdgeError) -> PlainTextResponse:
        """A file that went bad under a running dashboard: its one line, not a traceback."""
        return PlainTextResponse(f"500: {err.one_line()}", status_code=500)

    @app.get("/healthz", response_class=PlainTextResponse)
    def healthz() -> str:
        return "ok"

    views: dict[str, Callable[..., Any]] = {
        "cluster": sources.cluster,
        "apps": sources.apps,
        "training": sources.training,
        "events": sources.events,
        "serving": sources.serving,
        "kb": sources.knowledge,
        "runs": lambda: {"runs": sources.past_runs()},
    }

    @app.get("/api/control")
    def control_state() -> dict[str, Any]:
        return {"enabled": allow_control, "spec": str(spec) if spec else None, "kinds": KINDS}

    @app.post("/api/control/devices")
    async def add_device(request: Request) -> JSONResponse:
        """Add a device to the watched cluster spec: a running job brings it in. JSON
        only: a page of another site cannot send that without a preflight this app never
        answers, so a browser on this machine cannot be made to post it."""
        from deepedge.cluster.specfile import add_to_spec_file, new_device

        origin = request.headers.get("origin")
        if origin is not None and origin.split("://", 1)[-1] != request.headers.get("host"):
            return JSONResponse({"error": "cross-origin control is refused"}, status_code=403)
        if request.headers.get("content-type", "").split(";")[0] != "application/json":
            return JSONResponse({"error": "send the device as JSON"}, status_code=415)
        if spec is None:
            return JSONResponse(
                {"error": "no cluster spec to add to: start the dashboard with --spec"},
                status_code=409,
            )
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return JSONResponse({"error": "the body is not a JSON object"}, status_code=400)
        try:
            device = new_device(**{k: body.get(k) for k in DEVICE_FIELDS})
            count = add_to_spec_file(spec, device)
        except DeepEdgeError as err:
            return JSONResponse({"error": err.one_line()}, status_code=400)
        return JSONResponse({"added": device.name, "devices": count, "spec": str(spec)})

    @app.get("/runs/{index}/plots/{name}")
    def run_plot(index: int, name: str) -> Response:
        path = sources.run_plot(index, name)
        if path is None:
            return PlainTextResponse(f"run {index} lists no plot {name!r}", status_code=404)
        return FileResponse(path)

    @app.get("/kb/plots/{name}.png")
    def kb_plot(name: str) -> Response:
        png = sources.kb_plot(name)
        if png is None:
            return PlainTextResponse(f"the knowledge base has no plot {name!r}", status_code=404)
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-cache"})

    @app.get("/api/{page}")
    def api(page: str, since: float | None = None) -> JSONResponse:
        """A page's data; ``since`` (the ``updated`` of the last poll): only the series
        points after it, for the pages with series (the page appends them)."""
        if page not in views:
            return JSONResponse({"error": f"no page {page!r}"}, status_code=404)
        if since is not None and page in INCREMENTAL:
            return JSONResponse(views[page](since))
        return JSONResponse(views[page]())

    def render(page: str) -> HTMLResponse:
        html = templates.get_template(f"{page}.html").render(
            page=page,
            pages=PAGES,
            data=views[page](),
            control=allow_control,
            spec=spec,
            kinds=KINDS,
        )
        return HTMLResponse(html)

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return render("cluster")

    @app.get("/{page}", response_class=HTMLResponse)
    def page(page: str) -> HTMLResponse:
        if page not in PAGES:
            return HTMLResponse(f"no page {page}", status_code=404)
        return render(page)

    return app


LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})


def _hostname(host: str | None) -> str:
    """The name in a ``Host`` header, without its port (``[::1]:8050`` → ``::1``)."""
    if not host:
        return ""
    if host.startswith("["):
        return host[1 : host.find("]")]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _token_of(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.query_params.get("token") or request.cookies.get(COOKIE)


def _num(value: Any, digits: int = 2) -> str:
    """A number for a table cell: ``–`` for nothing measured."""
    if value is None:
        return "–"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.{digits}f}"  # as dashboard.js formats it, so a poll changes nothing
    return str(value)


def _clock(ts: float | None) -> str:
    """A sample time as dashboard.js shows it (UTC, to the second)."""
    if ts is None:
        return "–"
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S") + " UTC"
