"""The review page over a real tiny run: every route through Starlette's TestClient, the command as a process,
and the page in a real headless Chromium that uploads a video and reads the verdict."""

from __future__ import annotations

import base64
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import uvicorn
from conftest import build_args, run_cli, train_args
from sklearn.metrics import roc_auc_score
from starlette.testclient import TestClient

from bench.remote import free_port
from cache import open_store
from cache.schema import OK, SPLIT_CODES
from train.inference import TrainedModel, decode_videos
from train.models import SEED_MODELS
from train.prediction import predict
from train.review_app import TOKEN_COOKIE, PageSettings, build_app
from train.run_review import open_review

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def run(all_run, tiny_cache, tmp_path_factory) -> Path:
    """A copy of the three-model run with its cross-dataset table, as `train.evaluate` writes it."""
    copy = tmp_path_factory.mktemp("review") / "run"
    shutil.copytree(all_run[0], copy)
    run_cli("train.evaluate", "--run", str(copy), "--cache", str(tiny_cache))
    return copy


@pytest.fixture(scope="module")
def review(run, tiny_cache):
    opened = open_review(run, [tiny_cache])
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def client(review) -> TestClient:
    return TestClient(build_app(review))


def demo_video(demo_root: Path) -> Path:
    return next(iter(sorted((demo_root / "Celeb-synthesis").glob("*.mp4"))))


def decoded_jpeg(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not an image"
    return image[..., ::-1]


@pytest.mark.slow
def test_the_run_page_shows_each_model_the_runs_tables_and_each_splits_counts(client, run, tiny_cache):
    page = client.get("/")
    assert page.status_code == 200
    models = re.findall(r'<tr class="model"><td><a [^>]*>([a-z0-9_]+)</a>', page.text)
    assert models == list(SEED_MODELS)
    for name in SEED_MODELS:  # each model's chosen threshold and test ROC AUC, as its metrics.json has them
        metrics = json.loads((run / name / "metrics.json").read_text())
        assert f"{metrics['threshold']:.3f}" in page.text
        assert f'src="figure?model={name}&amp;name=curves"' in page.text
    assert "<div id='comparison'><table>" in page.text and "<div id='cross_dataset'><table>" in page.text
    assert ":---" not in page.text  # a markdown table's separator line is no row
    with open_store(tiny_cache) as store:
        for split, code in SPLIT_CODES.items():
            videos = int(((store.status == OK) & (store.split == code)).sum())
            assert f'<td>{split}</td><td class="num">{videos}</td>' in page.text


@pytest.mark.slow
def test_a_models_figures_are_its_files_and_nothing_else(client, run):
    curves = client.get("/figure", params={"model": "resnet18", "name": "curves"})
    assert curves.status_code == 200 and curves.content == (run / "resnet18" / "curves.png").read_bytes()
    for name in ("../metrics", "best", "../../comparison"):
        assert client.get("/figure", params={"model": "resnet18", "name": name}).status_code == 404
    assert client.get("/figure", params={"model": "nope", "name": "curves"}).status_code == 404


@pytest.mark.slow
@pytest.mark.parametrize("model", SEED_MODELS)
def test_the_videos_are_scored_as_train_evaluate_scores_them_most_wrong_first(client, run, model):
    answer = client.get("/api/videos", params={"model": model, "store": "tiny", "split": "test"})
    assert answer.status_code == 200
    videos = answer.json()["videos"]
    assert videos and {"row", "path", "label", "probability", "verdict"} <= set(videos[0])
    labels = [int(video["label"] == "fake") for video in videos]
    probabilities = [video["probability"] for video in videos]
    table = json.loads((run / "cross_dataset.json").read_text())["models"][model]["tiny"]
    assert roc_auc_score(labels, probabilities) == pytest.approx(table["roc_auc"], abs=1e-9)
    threshold = json.loads((run / model / "metrics.json").read_text())["threshold"]
    for video in videos:
        assert video["verdict"] == ("fake" if video["probability"] >= threshold else "real")
        assert video["mistaken"] == (video["verdict"] != video["label"])
    mistaken = [video["mistaken"] for video in videos]
    assert mistaken == sorted(mistaken, reverse=True)  # the mistakes at the threshold first
    for group in (True, False):  # each group the most confidently wrong first
        wrongness = [v["probability"] if v["label"] == "real" else 1 - v["probability"] for v in videos]
        wrongness = [value for value, wrong in zip(wrongness, mistaken, strict=True) if wrong == group]
        assert wrongness == sorted(wrongness, reverse=True)


@pytest.mark.slow
def test_the_list_filters_by_split_label_and_store(client, tiny_cache):
    def rows(**params) -> list[dict]:
        answer = client.get("/api/videos", params={"model": "simple_cnn", **params})
        assert answer.status_code == 200, answer.text
        return answer.json()["videos"]

    with open_store(tiny_cache) as store:
        ok = store.status == OK
        assert sorted(v["row"] for v in rows(split="all")) == np.flatnonzero(ok).tolist()
        val = np.flatnonzero(ok & (store.split == SPLIT_CODES["val"])).tolist()
        assert sorted(v["row"] for v in rows(store="tiny", split="val")) == val
    fakes = rows(split="all", label="fake")
    assert fakes and {v["label"] for v in fakes} == {"fake"} and {v["split"] for v in rows(split="all")} > {"test"}
    for bad in ({"model": "nope"}, {"store": "nope"}, {"split": "everything"}, {"label": "maybe"}):
        answer = client.get("/api/videos", params={"model": "simple_cnn", **bad})
        assert answer.status_code == 404 and "no " in answer.json()["error"]


@pytest.mark.slow
def test_the_mistakes_page_lists_each_video_with_a_strip_of_its_frames(client, review):
    page = client.get("/videos", params={"model": "effnet_lstm", "store": "tiny"})
    assert page.status_code == 200
    listed = review.video_list("effnet_lstm", ["tiny"], "test")
    assert page.text.count('<tr class="video') == len(listed)
    first = re.search(r'<img class="strip" loading="lazy" src="([^"]+)"', page.text).group(1).replace("&amp;", "&")
    assert f"row={listed[0].row}" in first
    strip = decoded_jpeg(client.get("/" + first).content)
    assert strip.shape == (72, 72 * 4, 3)  # the tiny store's 4 frames side by side
    frames = review.frames("tiny", listed[0].row)
    expected = cv2.resize(frames[0], (72, 72), interpolation=cv2.INTER_AREA).astype(int)
    assert np.abs(strip[:, :72].astype(int) - expected).mean() < 6


@pytest.mark.slow
def test_a_video_shows_every_frame_with_its_own_score(client, review, tiny_cache):
    row = review.video_list("resnet18", ["tiny"], "test")[0].row
    answer = client.get("/api/video", params={"model": "resnet18", "store": "tiny", "row": row})
    assert answer.status_code == 200
    body = answer.json()
    trained = review.model("resnet18")
    frames = review.frames("tiny", row)
    with open_store(tiny_cache) as store:
        assert [frame["index"] for frame in body["frames"]] == store.frame_index[row].tolist()
    # resnet18 averages its frames' features: a frame's own score is that of a clip of it alone, repeated.
    alone = [trained.probabilities(np.repeat(frames[t : t + 1], len(frames), axis=0)[None])[0] for t in range(4)]
    assert [frame["probability"] for frame in body["frames"]] == pytest.approx(alone, abs=1e-5)
    assert {frame["box"] for frame in body["frames"]} == {None}  # a squashed store has no face box
    page = client.get("/video", params={"model": "resnet18", "store": "tiny", "row": row})
    assert page.status_code == 200 and page.text.count("<figure>") == len(frames)
    stored = decoded_jpeg(client.get("/frame", params={"store": "tiny", "row": row, "t": 2}).content)
    assert stored.shape == frames[2].shape and np.abs(stored.astype(int) - frames[2]).mean() < 6


@pytest.mark.slow
def test_grad_cam_is_drawn_on_demand(client, review):
    row = review.video_list("simple_cnn", ["tiny"], "test")[0].row
    page = client.get("/video", params={"model": "simple_cnn", "store": "tiny", "row": row})
    assert 'id="gradcam"' not in page.text and 'id="explain"' in page.text
    page = client.get("/video", params={"model": "simple_cnn", "store": "tiny", "row": row, "explain": 1})
    assert 'id="gradcam"' in page.text
    png = client.get("/explanation", params={"model": "simple_cnn", "store": "tiny", "row": row})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert decoded_jpeg(png.content).shape[1] > 300


@pytest.mark.slow
def test_rows_the_store_does_not_hold_decoded_are_not_found(client, tiny_cache):
    with open_store(tiny_cache) as store:
        failed = np.flatnonzero(store.status != OK).tolist()
        rows = len(store)
    for row in [rows, 10**9, *failed[:1]]:
        for route in ("/api/video", "/video", "/strip", "/frame", "/explanation", "/source"):
            answer = client.get(route, params={"model": "simple_cnn", "store": "tiny", "row": row, "t": 0})
            assert answer.status_code == 404, (route, row)
    for row in ("-1", "1e3", "../0", ""):
        assert client.get("/strip", params={"store": "tiny", "row": row}).status_code == 404
    assert client.get("/strip", params={"store": str(tiny_cache), "row": 0}).status_code == 404
    assert client.get("/frame", params={"store": "tiny", "row": 0, "t": 4}).status_code == 404


def predicted_probability(run: Path, video: Path) -> tuple[float, str]:
    """`train.predict`'s verdict on a video: the reference an upload must match."""
    trained = TrainedModel.load(run / "simple_cnn")
    (prediction,) = predict(trained, [video], decode_videos([video], trained.clip, 1), 1)
    return prediction.probability, prediction.verdict


@pytest.fixture
def uploads(tmp_path, monkeypatch) -> Path:
    """A temporary folder of this test's own, where this process's uploads land while answered."""
    folder = tmp_path / "uploads"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.mark.slow
def test_an_upload_gets_predicts_verdict_per_frame_scores_and_the_explanation(client, run, demo_root, uploads):
    video = demo_video(demo_root)
    with open(video, "rb") as file:
        answer = client.post("/api/check?explain=1", files={"video": ("x.mp4", file)}, data={"model": "simple_cnn"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    probability, verdict = predicted_probability(run, video)
    assert body["probability"] == pytest.approx(probability, abs=1e-6) and body["verdict"] == verdict
    assert body["model"] == "simple_cnn" and len(body["frames"]) == 4
    assert decoded_jpeg(base64.b64decode(body["explanation_png"])).shape[1] > 300
    assert list(uploads.iterdir()) == []  # the upload is gone once answered


@pytest.mark.slow
def test_an_upload_that_is_not_a_video_or_too_large_is_refused(review, demo_root, uploads):
    client = TestClient(build_app(review, PageSettings(max_upload_mb=0.004)))
    text = client.post("/api/check", files={"video": ("v.mp4", b"this is not a video\n" * 10)})
    assert text.status_code == 422 and "does not decode" in text.json()["error"]
    video = demo_video(demo_root).read_bytes()
    assert 0.004 * 2**20 < len(video) < 0.004 * 2**20 + 2**16  # over the limit, within the form's allowance
    over = client.post("/api/check", files={"video": ("v.mp4", video)})
    assert over.status_code == 413 and "--max-upload-mb 0.004" in over.json()["error"]
    assert client.post("/api/check", files={"video": ("v.mp4", bytes(2**17))}).status_code == 413  # by its length
    boundary = "b0undary"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="video"; filename="v.mp4"\r\n\r\n'.encode()
    chunks = [head, *[bytes(2**14)] * 16, f"\r\n--{boundary}--\r\n".encode()]  # 256 KiB, sent as it is made
    chunked = client.post(
        "/api/check", content=iter(chunks), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    assert chunked.status_code == 413 and chunked.request.headers.get("content-length") is None
    assert client.post("/api/check", data={"model": "simple_cnn"}).status_code == 400
    wrong_model = client.post("/api/check", files={"video": ("v.mp4", b"x")}, data={"model": "nope"})
    assert wrong_model.status_code == 404
    assert list(uploads.iterdir()) == []


@pytest.mark.slow
def test_with_a_token_every_request_must_carry_it(review):
    client = TestClient(build_app(review, PageSettings(token="s3cret")))
    assert client.get("/").status_code == 403
    assert client.get("/", params={"token": "wrong"}).status_code == 403
    assert client.get("/api/videos", headers={"X-Review-Token": "s3cre"}).status_code == 403
    assert client.post("/api/check", files={"video": ("v.mp4", b"x")}).status_code == 403
    assert client.get("/api/videos", headers={"X-Review-Token": "s3cret"}).status_code == 200
    first = client.get("/", params={"token": "s3cret"})
    assert first.status_code == 200 and first.cookies.get(TOKEN_COOKIE) == "s3cret"
    assert client.get("/strip", params={"store": "tiny", "row": 0}).status_code == 200  # by the cookie alone


@pytest.fixture(scope="module")
def face_run(face_root, tmp_path_factory) -> tuple[Path, Path]:
    """A face-cropped store of the face photograph's videos and simple_cnn trained on it for one epoch."""
    folder = tmp_path_factory.mktemp("review-faces")
    store = folder / "faces.zarr"
    manifest = str(face_root / "manifest.csv")
    run_cli(*build_args(face_root, store, "--resize", "face", "--manifest", manifest, "--frames", "8"))
    run_cli(*train_args(store, folder / "run", "simple_cnn", "--epochs", "1"))
    return folder / "run", store


@pytest.mark.slow
def test_a_face_builds_boxes_are_shown_on_the_source_frame(face_run, face_root):
    run, store = face_run
    opened = open_review(run, [store])
    try:
        client = TestClient(build_app(opened))
        with open_store(store) as built:
            table = built.table()
            inside = [
                row
                for row in np.flatnonzero((built.status == OK) & (built.face_detected > 0)).tolist()
                if (built.face_box[row][4, :2] >= 0).all()
                and built.face_box[row][4, 2] <= table.width[row]
                and built.face_box[row][4, 3] <= table.height[row]
            ]
            row = inside[0]  # a video whose middle frame's box lies inside the frame, so all its sides show
            boxes, path = built.face_box[row].tolist(), built.path[row]
            width, height = int(table.width[row]), int(table.height[row])
        body = client.get("/api/video", params={"store": "faces", "row": row}).json()
        assert [frame["box"] for frame in body["frames"]] == boxes
        source = decoded_jpeg(client.get("/source", params={"store": "faces", "row": row}).content)
        assert source.shape == (height, width, 3), path
        x0, y0, x1, y1 = boxes[len(boxes) // 2]
        edge = source[max(y0, 0) + 1, max(x0, 0) + 10 : min(x1, width) - 10].astype(int)
        assert (edge[:, 0] > 200).mean() > 0.9 and (edge[:, 2] < 80).mean() > 0.9  # the yellow square's top side
        assert 'id="source"' in client.get("/video", params={"store": "faces", "row": row}).text
    finally:
        opened.close()


@pytest.mark.slow
def test_the_command_serves_says_its_address_and_ends_on_ctrl_c(run, tiny_cache):
    import urllib.request

    port = free_port()
    command = [sys.executable, "-m", "train.review", "--run", str(run), "--cache", str(tiny_cache)]
    process = subprocess.Popen(
        [*command, "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = process.stdout.readline()
        assert line == f"review: http://127.0.0.1:{port}/\n"
        page = wait_for(f"http://127.0.0.1:{port}/")
        assert "id='models'" in page
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/videos?split=all") as answer:
            assert json.loads(answer.read())["videos"]
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "review: interrupted: the page is closed; it wrote nothing"


@pytest.mark.slow
def test_another_host_gets_a_token_and_bad_input_ends_with_status_2(run, tiny_cache, tmp_path):
    port = free_port()
    command = [sys.executable, "-m", "train.review", "--run", str(run), "--cache", str(tiny_cache)]
    process = subprocess.Popen(
        [*command, "--host", "127.0.0.2", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        token = re.fullmatch(rf"review: http://127\.0\.0\.2:{port}/\?token=([\w-]{{20,}})\n", line).group(1)
        assert "403" in wait_for(f"http://127.0.0.2:{port}/", expect=403)
        assert "id='models'" in wait_for(f"http://127.0.0.2:{port}/?token={token}")
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)
    assert process.returncode == 143
    other = tmp_path / "other.zarr"
    assert run_cli("train.review", "--run", str(tmp_path), "--cache", str(tiny_cache), check=False).returncode == 2
    missing = run_cli("train.review", "--run", str(run), "--cache", str(other), check=False)
    assert missing.returncode == 2 and "no such store" in missing.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        busy = run_cli("train.review", "--run", str(run), "--cache", str(tiny_cache), "--port", port, check=False)
    assert busy.returncode == 2 and f"--port {port}: cannot listen there" in busy.stderr


def wait_for(url: str, expect: int = 200, seconds: float = 60) -> str:
    """The body at `url` once the server answers (a 403's status as text)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=30) as answer:
                assert expect == 200
                return answer.read().decode()
        except urllib.error.HTTPError as error:
            assert error.code == expect, error
            return str(error.code)
        except urllib.error.URLError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class ThreadedServer:
    """The real app under uvicorn in a thread of this process, on a free port of 127.0.0.1."""

    def __init__(self, app):
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive()
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}/"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def browser(tmp_path: Path):
    """Headless Chromium through Debian's chromedriver (nothing downloaded)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"):
        options.add_argument(flag)
    for flag in ("--disable-background-networking", "--disable-component-update", "--disable-sync"):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium'}")
    options.add_argument("--window-size=1280,900")
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


def dump_dom(url: str, tmp_path: Path) -> str:
    """The page as Chromium renders it, its scripts run: `chromium --headless --dump-dom`."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"]
    flags += ["--disable-background-networking", "--disable-component-update", "--disable-sync"]
    command = [CHROMIUM, *flags, f"--user-data-dir={tmp_path / 'dump'}", "--dump-dom", url]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None, reason="needs Debian's chromium and chromium-driver")
def test_in_a_real_browser_the_page_lists_mistakes_and_answers_an_upload(review, run, demo_root, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with ThreadedServer(build_app(review, PageSettings(token="browser-token"))) as url:
        dom = dump_dom(f"{url}?token=browser-token", tmp_path)
        assert re.findall(r'<tr class="model"><td><a [^>]*>([a-z0-9_]+)</a>', dom) == list(SEED_MODELS)
        driver = browser(tmp_path)
        try:
            driver.get(f"{url}videos?model=simple_cnn&token=browser-token")
            strips = driver.find_elements(By.CSS_SELECTOR, "img.strip")
            assert len(strips) == len(review.video_list("simple_cnn", [], "test"))
            driver.execute_script("arguments[0].scrollIntoView()", strips[-1])
            WebDriverWait(driver, 30).until(
                lambda d: all(d.execute_script("return arguments[0].naturalWidth", s) == 72 * 4 for s in strips)
            )
            driver.get(url)  # the cookie carries the token from here on
            video = demo_video(demo_root)
            driver.find_element(By.ID, "video").send_keys(str(video))
            driver.find_element(By.ID, "submit").click()
            verdict = WebDriverWait(driver, 120).until(
                lambda d: (text := d.find_element(By.ID, "verdict").text) not in ("", "checking...") and text
            )
            probability, expected = predicted_probability(run, video)  # simple_cnn: the form's first model
            threshold = review.model("simple_cnn").threshold
            assert verdict == f"{expected} (p(fake) {probability:.3f}, threshold {threshold:.3f}, simple_cnn)"
            assert driver.execute_script("return document.getElementById('explanation').naturalWidth") > 300
        finally:
            driver.quit()
