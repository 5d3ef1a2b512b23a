"""The review page of a run: a small Starlette app, server-rendered HTML, plain CSS and a few lines of JS.

Three views a researcher and a person checking a video need: the run (each model's metrics and figures, the
run's tables, each store's splits), its mistakes (the videos of a store, most confidently wrong first, each
with a strip of its frames) and one video (every frame with its own score, the face box, Grad-CAM on demand);
and an upload form that answers a new video with `train.predict`'s verdict and `train.explain`'s figure.
Everything it shows comes from `train.run_review`. Served beyond this machine, every request must carry the
token: as `?token=`, which the page turns into a cookie, or as an `X-Review-Token` header.
"""

from __future__ import annotations

import base64
import hmac
import html
from dataclasses import dataclass
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from train.reporting import final_split
from train.run_review import (
    LABELS,
    SPLITS,
    NotFound,
    RunReview,
    UndecodableVideo,
    VideoScore,
    jpeg,
    markdown_html,
    strip,
)

TOKEN_HEADER = "x-review-token"
TOKEN_COOKIE = "review_token"
LIST_METRICS = {
    "roc_auc": "ROC AUC",
    "frame_roc_auc": "frame ROC AUC",
    "average_precision": "AP",
    "eer": "EER",
    "balanced_accuracy": "bal. acc",
    "accuracy": "acc",
    "n": "videos",
}


@dataclass(frozen=True)
class PageSettings:
    """What the command sets: the upload limit and the token (None: no token, for 127.0.0.1 only)."""

    max_upload_mb: float = 500
    token: str | None = None

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)


class TokenGate:
    """Refuses (403) every request without the token; a right `?token=` sets the cookie so that the page's images
    and its upload carry it without putting it in every link."""

    def __init__(self, app: ASGIApp, token: str):
        self.app, self.token = app, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        given = request.query_params.get("token")
        offered = [given, request.headers.get(TOKEN_HEADER), request.cookies.get(TOKEN_COOKIE)]
        if not any(value is not None and hmac.compare_digest(value, self.token) for value in offered):
            await JSONResponse({"error": "a token is needed: add ?token=TOKEN to the address"}, 403)(
                scope, receive, send
            )
            return

        async def send_with_cookie(message) -> None:
            if message["type"] == "http.response.start" and given is not None:
                cookie = f"{TOKEN_COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
                message["headers"] = [*message.get("headers", []), (b"set-cookie", cookie.encode())]
            await send(message)

        await self.app(scope, receive, send_with_cookie)


# HTML pieces.

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.2em;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .5em;font-size:.9em}
th{background:#f2f2f2}td.num{text-align:right}.fake{color:#b00020;font-weight:600}.real{color:#0a6b2d;font-weight:600}
.wrong{background:#fff0f0}img.strip{height:48px;image-rendering:pixelated}nav a{margin-right:1em}
.frames{display:flex;flex-wrap:wrap;gap:6px}.frames figure{margin:0;text-align:center;font-size:.8em}
.frames img{width:112px;height:112px;image-rendering:pixelated}.figs img{max-width:48%;margin-right:1%}
#verdict{font-size:1.3em;margin:.5em 0}img.source{max-width:60%}form{margin:.5em 0}
"""

UPLOAD_SCRIPT = """
document.getElementById('check').addEventListener('submit', async (event) => {
  event.preventDefault();
  const out = document.getElementById('verdict');
  out.textContent = 'checking...';
  const answer = await fetch('api/check?explain=1', {method: 'POST', body: new FormData(event.target)});
  const body = await answer.json();
  if (!answer.ok) { out.textContent = 'error: ' + body.error; out.className = 'error'; return; }
  out.className = body.verdict;
  out.textContent = body.verdict + ' (p(fake) ' + body.probability.toFixed(3) + ', threshold '
    + body.threshold.toFixed(3) + ', ' + body.model + ')';
  document.getElementById('frame-scores').textContent = 'frame scores: '
    + body.frames.map(f => f.index + ': ' + f.probability.toFixed(2)).join(', ');
  document.getElementById('explanation').src = 'data:image/png;base64,' + body.explanation_png;
});
"""


def esc(value: object) -> str:
    return html.escape(str(value))


def number(value: object) -> str:
    return "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else esc(value)


def page(title: str, body: str, script: str = "") -> HTMLResponse:
    nav = '<nav><a href="./">run</a><a href="videos">mistakes</a></nav>'
    script_tag = f"<script>{script}</script>" if script else ""
    return HTMLResponse(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title><style>{STYLE}</style>"
        f"</head><body>{nav}<h1>{esc(title)}</h1>{body}{script_tag}</body></html>"
    )


def link(path: str, **query: object) -> str:
    return esc(f"{path}?{urlencode({k: v for k, v in query.items() if v is not None})}")


def options(values: list[str], chosen: str | None, blank: str | None = None) -> str:
    items = [f'<option value=""{" selected" if not chosen else ""}>{esc(blank)}</option>'] if blank else []
    items += [f"<option{' selected' if v == chosen else ''}>{esc(v)}</option>" for v in values]
    return "".join(items)


def final_metrics(metrics: dict) -> tuple[str, dict]:
    """The split the run's final figures are of (test where it has one, as its report shows) and those figures."""
    try:
        return final_split(metrics)
    except ValueError:  # a model with no final evaluation: its row says n/a
        return "n/a", {}


def models_table(review: RunReview) -> str:
    head = "".join(f"<th>{esc(label)}</th>" for label in LIST_METRICS.values())
    rows = []
    for name in review.models:
        metrics = review.metrics(name)
        split, figures = final_metrics(metrics)
        frame_auc = figures.get("frame_roc_auc", metrics.get("frame_roc_auc"))
        values = {**figures, "frame_roc_auc": frame_auc}
        cells = "".join(f'<td class="num">{number(values.get(key))}</td>' for key in LIST_METRICS)
        confusion = figures.get("confusion")
        rows.append(
            f'<tr class="model"><td><a href="{link("videos", model=name)}">{esc(name)}</a></td><td>{esc(split)}</td>'
            f'<td class="num">{number(metrics.get("threshold"))}</td>{cells}<td>{esc(confusion)}</td></tr>'
        )
    return (
        "<h2>Models</h2><table id='models'><tr><th>model</th><th>split</th><th>threshold</th>"
        f"{head}<th>confusion [[TN, FP], [FN, TP]]</th></tr>{''.join(rows)}</table>"
    )


def figures_html(review: RunReview) -> str:
    parts = []
    for name in review.models:
        images = []
        for figure in ("curves", "confusion"):
            try:
                review.figure(name, figure)
            except NotFound:
                continue
            images.append(f'<img src="{link("figure", model=name, name=figure)}" alt="{esc(name)} {figure}">')
        if images:
            parts.append(f"<h3>{esc(name)}</h3><div class='figs'>{''.join(images)}</div>")
    return "<h2>Training</h2>" + "".join(parts)


def splits_html(review: RunReview) -> str:
    rows = []
    for store in review.stores:
        for split, counts in review.split_counts(store).items():
            cells = "".join(f'<td class="num">{counts[key]}</td>' for key in ("videos", "real", "fake", "unknown"))
            rows.append(
                f'<tr><td><a href="{link("videos", store=store, split=split)}">{esc(store)}</a></td>'
                f"<td>{esc(split)}</td>{cells}</tr>"
            )
    return (
        "<h2>Stores</h2><table id='splits'><tr><th>store</th><th>split</th><th>videos</th><th>real</th><th>fake</th>"
        f"<th>unknown</th></tr>{''.join(rows)}</table>"
    )


def upload_html(review: RunReview, settings: PageSettings) -> str:
    return (
        f"<h2>Check a video</h2><form id='check'><input type='file' name='video' id='video' accept='video/*'> "
        f"<select name='model'>{options(list(review.models), None)}</select> "
        f"<button type='submit' id='submit'>check</button> (at most {settings.max_upload_mb:g} MB; decoded as "
        "the run's store was; the file is deleted once answered)</form><div id='verdict'></div>"
        "<div id='frame-scores'></div><img id='explanation' alt='' style='max-width:100%'>"
    )


def run_page(review: RunReview, settings: PageSettings) -> HTMLResponse:
    tables = "".join(
        f"<h2>{esc(name.replace('_', ' '))}</h2><div id='{esc(name)}'>{markdown_html(text)}</div>"
        for name, text in review.tables().items()
    )
    body = models_table(review) + tables + splits_html(review) + upload_html(review, settings) + figures_html(review)
    return page(f"run {review.run.name}", body, UPLOAD_SCRIPT)


def video_row(video: VideoScore, model: str) -> str:
    where = link("video", model=model, store=video.store, row=video.row)
    return (
        f'<tr class="video{" wrong" if video.mistaken else ""}"><td><a href="{where}">{esc(video.path)}</a></td>'
        f"<td>{esc(video.store)}</td><td>{video.row}</td><td>{esc(video.split)}</td><td>{esc(video.label)}</td>"
        f'<td class="num">{video.probability:.4f}</td><td class="{esc(video.verdict)}">{esc(video.verdict)}</td>'
        f'<td><img class="strip" loading="lazy" src="{link("strip", store=video.store, row=video.row)}" alt=""></td>'
        "</tr>"
    )


def filters_html(review: RunReview, model: str, store: str | None, split: str, label: str | None) -> str:
    return (
        "<form method='get' action='videos'>"
        f"model <select name='model'>{options(list(review.models), model)}</select> "
        f"store <select name='store'>{options(list(review.stores), store, 'every store')}</select> "
        f"split <select name='split'>{options(list(SPLITS), split)}</select> "
        f"label <select name='label'>{options(list(LABELS), label, 'any')}</select> "
        "<button>show</button></form>"
    )


# Request parsing: only names the run knows and row numbers.


def query_choice(request: Request, name: str) -> str | None:
    return request.query_params.get(name) or None


def query_row(request: Request) -> int:
    value = request.query_params.get("row", "")
    if not value.isdigit():
        raise NotFound(f"row {value!r} is not a row number")
    return int(value)


def video_filters(request: Request, review: RunReview) -> tuple[str, list[str], str, str | None]:
    model = review.model(query_choice(request, "model")).name
    store = query_choice(request, "store")
    if store is not None:
        review.store(store)
    return model, [store] if store else [], request.query_params.get("split", "test"), query_choice(request, "label")


def image(data: bytes, media_type: str = "image/jpeg") -> Response:
    return Response(data, media_type=media_type, headers={"Cache-Control": "private, max-age=3600"})


def build_app(review: RunReview, settings: PageSettings = PageSettings()) -> ASGIApp:
    """The page's app over a loaded run; wrapped in the token gate where `settings.token` is set."""

    async def home(request: Request) -> Response:
        return await run_in_threadpool(run_page, review, settings)

    async def videos(request: Request) -> Response:
        model, stores, split, label = video_filters(request, review)
        found = await run_in_threadpool(review.video_list, model, stores, split, label)
        rows = "".join(video_row(video, model) for video in found)
        mistakes = sum(video.mistaken for video in found)
        body = (
            filters_html(review, model, stores[0] if stores else None, split, label)
            + f"<p>{len(found)} videos, {mistakes} mistaken at {model}'s threshold "
            f"{review.model(model).threshold:.3f}, listed first; each the most confidently wrong first.</p>"
            "<table id='videos'><tr><th>video</th><th>store</th><th>row</th><th>split</th><th>label</th>"
            f"<th>p(fake)</th><th>verdict</th><th>frames</th></tr>{rows}</table>"
        )
        return page(f"{model}: videos", body)

    async def api_videos(request: Request) -> Response:
        model, stores, split, label = video_filters(request, review)
        found = await run_in_threadpool(review.video_list, model, stores, split, label)
        return JSONResponse({"model": model, "split": split, "videos": [video.as_dict() for video in found]})

    async def video(request: Request) -> Response:
        model = review.model(query_choice(request, "model")).name
        store, row = request.query_params.get("store", ""), query_row(request)
        score = await run_in_threadpool(review.video_score, model, store, row)
        frames = await run_in_threadpool(review.frame_views, model, store, row)
        figures = "".join(
            f'<figure><img src="{link("frame", store=store, row=row, t=t)}" alt="frame {frame.index}">'
            f"<figcaption>frame {frame.index}<br>p {frame.probability:.3f}"
            f"{'<br>box ' + esc(frame.box) if frame.box else ''}</figcaption></figure>"
            for t, frame in enumerate(frames)
        )
        explain = request.query_params.get("explain") == "1"
        cam = (
            f'<img id="gradcam" src="{link("explanation", model=model, store=store, row=row)}" alt="Grad-CAM">'
            if explain
            else f'<a id="explain" href="{link("video", model=model, store=store, row=row, explain=1)}">'
            "draw Grad-CAM</a>"
        )
        source = (
            f'<img id="source" src="{link("source", store=store, row=row)}" alt="no face found" class="source">'
            if review.store(store).spec.resize == "face"
            else "<p>the store squashes whole frames: no face box</p>"
        )
        body = (
            f"<p>{esc(score.path)}: label {esc(score.label)}, p(fake) {score.probability:.3f}, "
            f"<span class='{esc(score.verdict)}'>{esc(score.verdict)}</span> at {model}'s threshold "
            f"{review.model(model).threshold:.3f}</p><h2>Frames (each scored alone)</h2><div class='frames'>{figures}"
            f"</div><h2>Face box on the source frame</h2>{source}<h2>Grad-CAM</h2>{cam}"
        )
        return page(f"{store} row {row}", body)

    async def api_video(request: Request) -> Response:
        model = review.model(query_choice(request, "model")).name
        store, row = request.query_params.get("store", ""), query_row(request)
        score = await run_in_threadpool(review.video_score, model, store, row)
        frames = await run_in_threadpool(review.frame_views, model, store, row)
        return JSONResponse({**score.as_dict(), "model": model, "frames": [frame.__dict__ for frame in frames]})

    async def strip_image(request: Request) -> Response:
        frames = await run_in_threadpool(review.frames, request.query_params.get("store", ""), query_row(request))
        return image(jpeg(strip(frames)))

    async def frame_image(request: Request) -> Response:
        frames = await run_in_threadpool(review.frames, request.query_params.get("store", ""), query_row(request))
        t = request.query_params.get("t", "")
        if not t.isdigit() or int(t) >= len(frames):
            raise NotFound(f"no stored frame {t!r} (0..{len(frames) - 1})")
        return image(jpeg(frames[int(t)], 92))

    async def source_image(request: Request) -> Response:
        store, row = request.query_params.get("store", ""), query_row(request)
        frame = await run_in_threadpool(review.source_frame, store, row)
        if frame is None:
            raise NotFound(f"store {store!r} keeps no face box for row {row}, or its video is gone")
        return image(jpeg(frame))

    async def explanation(request: Request) -> Response:
        model = review.model(query_choice(request, "model")).name
        store, row = request.query_params.get("store", ""), query_row(request)
        return image(await run_in_threadpool(review.explanation_png, model, store, row), "image/png")

    async def figure(request: Request) -> Response:
        model = review.model(query_choice(request, "model")).name
        return FileResponse(review.figure(model, request.query_params.get("name", "")), media_type="image/png")

    async def check(request: Request) -> Response:
        return await check_upload(request, review, settings)

    routes = [
        Route("/", home),
        Route("/videos", videos),
        Route("/video", video),
        Route("/strip", strip_image),
        Route("/frame", frame_image),
        Route("/source", source_image),
        Route("/explanation", explanation),
        Route("/figure", figure),
        Route("/api/videos", api_videos),
        Route("/api/video", api_video),
        Route("/api/check", check, methods=["POST"]),
    ]

    async def too_large(request: Request, error: Exception) -> Response:
        return JSONResponse({"error": f"the upload is larger than --max-upload-mb {settings.max_upload_mb:g}"}, 413)

    handlers = {NotFound: not_found, UndecodableVideo: undecodable, UploadTooLarge: too_large}
    app = Starlette(routes=routes, exception_handlers=handlers)
    return app if settings.token is None else TokenGate(app, settings.token)


FORM_ALLOWANCE = 2**16  # bytes of a multipart body beyond its file: boundaries, headers, the model's name


class UploadTooLarge(Exception):
    """A request body past --max-upload-mb (and the form's allowance): 413, however it is sent."""


def limited_body(request: Request, limit: int) -> Request:
    """`request` whose body stops with UploadTooLarge once past `limit` bytes, as it streams in: a chunked upload
    without a Content-Length is cut off too, before it fills the disk."""
    received = 0

    async def receive():
        nonlocal received
        message = await request.receive()
        received += len(message.get("body", b""))
        if received > limit:
            raise UploadTooLarge
        return message

    return Request(request.scope, receive)


async def check_upload(request: Request, review: RunReview, settings: PageSettings) -> Response:
    """POST /api/check: multipart field `video` (and optional `model`): the verdict, each frame's score, and with
    `?explain=1` the explanation PNG in base64."""
    limit = settings.max_upload_bytes + FORM_ALLOWANCE
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise UploadTooLarge
    form = await limited_body(request, limit).form(max_files=1, max_fields=4)
    try:
        upload = form.get("video")
        if not isinstance(upload, UploadFile):
            return JSONResponse({"error": "send the video as multipart field 'video'"}, 400)
        if upload.size is not None and upload.size > settings.max_upload_bytes:
            raise UploadTooLarge
        model = form.get("model") if isinstance(form.get("model"), str) else None
        review.model(model)
        result = await run_in_threadpool(review.check, model, upload.file, upload.filename)
    finally:
        await form.close()
    answer = result.as_dict()
    if request.query_params.get("explain") == "1":
        answer["explanation_png"] = base64.b64encode(result.explanation_png).decode()
    return JSONResponse(answer)


async def not_found(request: Request, error: Exception) -> Response:
    return JSONResponse({"error": str(error)}, 404)


async def undecodable(request: Request, error: Exception) -> Response:
    return JSONResponse({"error": str(error)}, 422)
