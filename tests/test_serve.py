"""`latentrt serve` (issue 13): real clients nobody here wrote (the official `openai` package, `requests`) against a
real uvicorn server on loopback with the shipped model, images checked with the shapes judge; batching, the queue,
cancellation, bad input, the API key, graceful shutdown, and Ray Serve with 2 replicas."""

from __future__ import annotations

import base64
import io
import json
import math
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra: pip install 'latentrt[serve]'")
import requests  # noqa: E402
import uvicorn  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.serve_load import free_port, start_server  # noqa: E402
from latentrt import Pipeline  # noqa: E402
from latentrt.serve import ServeOptions, create_app  # noqa: E402
from latentrt.runtime.request import Request  # noqa: E402
from latentrt.serve.jobs import Cancelled, Job, JobQueue  # noqa: E402
from training.shapes.judge import judge  # noqa: E402

PROMPT = "a red circle at the top left on a white background"
PROMPT2 = "a blue square at the bottom right on a black background"
ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def running_server(pipe: Pipeline | None = None, wait: bool = True, **options):
    """A uvicorn server in a thread on a free loopback port, ready (GET /health 200) or failed to load (or, with
    wait=False, only listening)."""
    port = free_port()
    app = create_app(ServeOptions(provider="cpu", precision="fp32", **options), pipe=pipe)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            health = requests.get(f"{url}/health", timeout=5)
            if not wait or health.status_code == 200 or health.json().get("status") == "failed":
                break
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    try:
        yield url, app.state.latentrt
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def pipe():
    with Pipeline.default(provider="cpu", precision="fp32") as pipeline:
        yield pipeline


@pytest.fixture(scope="module")
def server(pipe):
    with running_server(pipe, max_batch=4, max_images=4) as running:
        yield running


def png(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def b64png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def metric(url: str, name: str) -> float:
    """The sum of a metric's samples in GET /metrics."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


# --- real clients ------------------------------------------------------------------------------------------
def test_openai_sdk_generates_what_the_pipeline_generates(server, pipe):
    openai = pytest.importorskip("openai")
    url, _ = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    response = client.images.generate(model="shapes", prompt=PROMPT, n=2, size="64x64", response_format="b64_json",
                                      extra_body={"seed": 7, "steps": 4})
    assert len(response.data) == 2 and response.created > 0
    images = [png(d.b64_json) for d in response.data]
    for image, seed in zip(images, (7, 8)):  # image i is seed + i's image, as a call of its own gives it
        assert f"Seed: {seed}," in image.text["parameters"]
        alone = pipe(PROMPT, seed=seed, steps=4).arrays[0]
        assert np.abs(np.asarray(image.convert("RGB"), np.int16) - alone).max() <= 1
    verdict = judge(np.asarray(images[0].convert("RGB")))
    assert (verdict.color, verdict.shape, verdict.background) == ("red", "circle", "white")
    assert response.model_extra.get("model") == "shapes"


def test_a1111_txt2img_with_requests(server):
    url, _ = server
    body = {"prompt": PROMPT2, "negative_prompt": "", "steps": 4, "cfg_scale": 1, "width": 64, "height": 64,
            "seed": 5, "sampler_name": "DPM++ 2M", "batch_size": 2}
    answer = requests.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    data = answer.json()
    info = json.loads(data["info"])
    assert info["all_seeds"] == [5, 6] and info["sampler_name"] == "dpm++2m"
    assert data["parameters"]["prompt"] == PROMPT2
    images = [png(b) for b in data["images"]]
    assert [i.size for i in images] == [(64, 64)] * 2
    assert "Sampler: dpm++2m" in images[1].text["parameters"] and "Seed: 6," in images[1].text["parameters"]
    verdict = judge(np.asarray(images[0].convert("RGB")))
    assert (verdict.color, verdict.shape, verdict.background) == ("blue", "square", "black")


def test_deepcache_requests_batch_and_give_the_pipelines_images(server, pipe, tmp_path):
    """cache_interval (latentrt's extension) on both APIs: concurrent requests batch with each other only when their
    intervals agree, and every image is the one the pipeline gives alone."""
    url, _ = server
    bodies = [{"prompt": PROMPT, "n": 1, "size": "64x64", "seed": seed, "steps": 9, "scheduler": "ddim",
               "cache_interval": interval} for seed, interval in ((1, 3), (2, 3), (3, 1))]
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda b: requests.post(f"{url}/v1/images/generations", json=b, timeout=120), bodies))
    for body, answer in zip(bodies, answers):
        assert answer.status_code == 200, answer.text
        image = png(answer.json()["data"][0]["b64_json"])
        alone = pipe(PROMPT, seed=body["seed"], steps=9, scheduler="ddim", cache_interval=body["cache_interval"]).arrays[0]
        assert np.abs(np.asarray(image.convert("RGB"), np.int16) - alone).max() <= 1
        assert ("DeepCache interval: 3" in image.text["parameters"]) == (body["cache_interval"] == 3)
    answer = requests.post(f"{url}/sdapi/v1/txt2img", json={"prompt": PROMPT, "steps": 9, "seed": 1,
                                                              "sampler_name": "DDIM", "cache_interval": 3}, timeout=120)
    assert answer.status_code == 200, answer.text
    assert "DeepCache interval: 3" in png(answer.json()["images"][0]).text["parameters"]
    answer = requests.post(f"{url}/v1/images/generations", json={"prompt": PROMPT, "cache_interval": 0}, timeout=30)
    assert answer.status_code == 422


def test_deepcache_request_to_a_model_without_the_shallow_unet_is_refused(tiny_sd1):
    from types import SimpleNamespace

    from latentrt.serve.app import ApiError, check_job
    from latentrt.serve.jobs import Job

    with Pipeline.from_folder(tiny_sd1[1], provider="cpu") as plain:
        job = Job(Request(PROMPT, steps=4, cache_interval=2), [1])
        with pytest.raises(ApiError, match="latentrt export --deepcache") as refused:
            check_job(SimpleNamespace(pipe=plain), job)
        assert refused.value.status == 422


def test_a1111_img2img_and_inpaint_with_requests(server, pipe):
    url, _ = server
    source = pipe(PROMPT, seed=3, steps=4).images[0]
    body = {"prompt": PROMPT2, "init_images": [b64png(source)], "denoising_strength": 0.75, "seed": 1, "steps": 8}
    answer = requests.post(f"{url}/sdapi/v1/img2img", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    assert answer.json()["parameters"]["init_images"] is None  # not echoed back, as A1111
    assert "Denoising strength: 0.75" in png(answer.json()["images"][0]).text["parameters"]
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (24, 24, 64, 64))
    body = {"prompt": PROMPT, "init_images": ["data:image/png;base64," + b64png(source)], "mask": b64png(mask),
            "denoising_strength": 1.0, "seed": 2, "steps": 4, "sampler_name": "Euler a"}
    answer = requests.post(f"{url}/sdapi/v1/img2img", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    inpainted = np.asarray(png(answer.json()["images"][0]).convert("RGB"), np.int16)
    expected = pipe(PROMPT, image=source, mask_image=mask, strength=1.0, seed=2, steps=4, scheduler="euler-a").arrays[0]
    assert np.abs(inpainted - expected).max() <= 1
    assert "Sampler: euler-a" in png(answer.json()["images"][0]).text["parameters"]


def test_samplers_models_health_and_metrics(server):
    url, _ = server
    samplers = requests.get(f"{url}/sdapi/v1/samplers", timeout=10).json()
    assert {"Euler a", "DPM++ 2M Karras", "DDIM", "UniPC"} <= {s["name"] for s in samplers}
    models = requests.get(f"{url}/sdapi/v1/sd-models", timeout=10).json()
    assert models[0]["model_name"] == "shapes" and len(models[0]["hash"]) == 10
    health = requests.get(f"{url}/health", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ready"
    assert health.headers["x-latentrt-replica"]
    text = requests.get(f"{url}/metrics", timeout=10).text
    for name in ("latentrt_requests_total", "latentrt_queue_depth", "latentrt_request_latency_seconds_bucket",
                 "latentrt_images_total", "latentrt_errors_total"):
        assert name in text


# --- the queue ---------------------------------------------------------------------------------------------
def _jobs(seeds, scheduler=None):
    return [Job(Request(p, steps=4, scheduler=scheduler), seeds=[s]) for p, s in zip([PROMPT, PROMPT2, PROMPT], seeds)]


def _submit_together(queue: JobQueue, jobs: list[Job]):
    with queue._cond:  # the worker cannot take a job until all are queued: one batch
        return [queue.submit(job) for job in jobs]


def test_compatible_requests_are_batched_into_the_images_they_get_alone(pipe):
    queue = JobQueue(pipe, max_queue=8, max_batch=4)
    try:
        results = [f.result(120) for f in _submit_together(queue, _jobs([11, 12, 13]))]
    finally:
        queue.close()
    assert [r.timings.get("batched_images") for r in results] == [3, 3, 3]
    for result, prompt, seed in zip(results, [PROMPT, PROMPT2, PROMPT], [11, 12, 13]):
        assert result.parameters[0].seed == seed and result.parameters[0].prompt == prompt
        alone = pipe(prompt, seed=seed, steps=4).arrays[0]
        assert np.abs(result.arrays[0].astype(np.int16) - alone).max() <= 1


def test_stochastic_schedulers_and_batching_off_run_alone(pipe):
    for max_batch, scheduler in ((4, "euler-a"), (1, None)):
        queue = JobQueue(pipe, max_queue=8, max_batch=max_batch)
        try:
            results = [f.result(120) for f in _submit_together(queue, _jobs([1, 2], scheduler))]
        finally:
            queue.close()
        assert [r.timings.get("batched_images") for r in results] == [None, None]
    alone = pipe(PROMPT2, seed=2, steps=4, scheduler="euler-a").arrays[0]
    queue = JobQueue(pipe, max_batch=4)
    try:
        again = queue.submit(_jobs([7, 2], "euler-a")[1]).result(120)
    finally:
        queue.close()
    assert np.array_equal(again.arrays[0], alone)


def test_a_cancelled_job_does_not_run_and_the_queue_bounds(pipe):
    queue = JobQueue(pipe, max_queue=1, max_batch=1)
    try:
        with queue._cond:
            first, second = _jobs([1, 2])
            queue.submit(first)
            with pytest.raises(Exception, match="busy"):
                queue.submit(second)  # one waiting already: --max-queue 1
            first.cancelled.set()
        with pytest.raises(Cancelled):
            first.future.result(60)
    finally:
        queue.close()
    with pytest.raises(Exception, match="shutting down"):
        queue.submit(second)


def test_a_client_that_disconnects_cancels_its_queued_request(pipe):
    with running_server(pipe, max_batch=1) as (url, state):
        slow = {"prompt": PROMPT, "steps": 80, "size": "192x192", "seed": 1}
        with ThreadPoolExecutor(1) as pool:
            busy = pool.submit(requests.post, f"{url}/v1/images/generations", json=slow, timeout=300)
            time.sleep(0.5)
            with pytest.raises(requests.Timeout):  # waits behind the slow one, then gives up
                requests.post(f"{url}/v1/images/generations", json={"prompt": PROMPT2, "seed": 2}, timeout=1.5)
            time.sleep(1.5)
            assert metric(url, 'latentrt_errors_total{kind="cancelled"}') == 1
            assert busy.result().status_code == 200
        time.sleep(0.5)
        assert metric(url, "latentrt_images_total") == 1  # the cancelled request made no image
        assert requests.post(f"{url}/v1/images/generations", json={"prompt": PROMPT2}, timeout=60).status_code == 200


# --- bad input ---------------------------------------------------------------------------------------------
BAD = [
    ("/v1/images/generations", b"{not json", 400, "not valid JSON"),
    ("/v1/images/generations", {"prompt": PROMPT, "steps": "many"}, 422, "steps"),
    ("/v1/images/generations", {"prompt": ""}, 422, "prompt"),
    ("/v1/images/generations", {"prompt": PROMPT, "n": 0}, 422, "n"),
    ("/v1/images/generations", {"prompt": PROMPT, "n": 10**6}, 422, "1 to 4 images"),
    ("/v1/images/generations", {"prompt": PROMPT, "size": "62x64"}, 422, "multiple of 4"),
    ("/v1/images/generations", {"prompt": PROMPT, "size": "big"}, 422, "WIDTHxHEIGHT"),
    ("/v1/images/generations", {"prompt": PROMPT, "size": "100000x100000"}, 422, "largest size that fits"),
    ("/v1/images/generations", {"prompt": PROMPT, "scheduler": "fastest"}, 422, "unknown scheduler"),
    ("/v1/images/generations", {"prompt": PROMPT, "response_format": "url"}, 400, "b64_json"),
    ("/v1/images/generations", {"prompt": PROMPT, "guidance_scale": -1}, 422, "guidance_scale"),
    ("/sdapi/v1/txt2img", {"prompt": PROMPT, "sampler_name": "Warp Drive"}, 422, "unknown sampler"),
    ("/sdapi/v1/txt2img", {"prompt": PROMPT, "batch_size": 0}, 422, "batch_size"),
    ("/sdapi/v1/txt2img", {"prompt": PROMPT, "batch_size": 3, "n_iter": 1000}, 422, "1 to 4 images"),
    ("/sdapi/v1/txt2img", {"prompt": PROMPT, "width": 66}, 422, "multiple of 4"),
    ("/sdapi/v1/txt2img", {"prompt": PROMPT, "seed": 2**40}, 422, "seed"),
    ("/sdapi/v1/img2img", {"prompt": PROMPT, "init_images": ["%%%"]}, 422, "not base64"),
    ("/sdapi/v1/img2img", {"prompt": PROMPT, "init_images": [base64.b64encode(b"hello").decode()]}, 422, "not an image"),
    ("/sdapi/v1/img2img", {"prompt": PROMPT, "init_images": []}, 422, "init_images"),
    ("/sdapi/v1/img2img", {"prompt": PROMPT, "init_images": ["x"], "denoising_strength": 2}, 422, "denoising_strength"),
]


@pytest.mark.parametrize("route,body,status,words", BAD, ids=[f"{r.rsplit('/', 1)[1]}-{w}" for r, _, _, w in BAD])
def test_bad_input_is_answered_and_the_server_keeps_serving(server, route, body, status, words):
    url, _ = server
    kwargs = {"data": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) else {"json": body}
    answer = requests.post(f"{url}{route}", timeout=60, **kwargs)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    message = error["message"] if route.startswith("/v1/") else answer.json()["detail"]
    assert words.lower() in message.lower(), message
    assert requests.get(f"{url}/health", timeout=10).status_code == 200


def test_a_full_queue_answers_429_with_retry_after(server):
    url, state = server
    state.queue.max_queue = 0
    try:
        answer = requests.post(f"{url}/v1/images/generations", json={"prompt": PROMPT}, timeout=60)
    finally:
        state.queue.max_queue = 64
    assert answer.status_code == 429 and int(answer.headers["retry-after"]) >= 1
    assert answer.json()["error"]["code"] == "queue_full"


def test_body_limits_and_slow_clients(pipe):
    with running_server(pipe, max_body_bytes=1000, body_timeout_s=1.0) as (url, _):
        big = requests.post(f"{url}/sdapi/v1/txt2img", json={"prompt": "x" * 2000}, timeout=30)
        assert big.status_code == 413 and "larger than 1000 bytes" in big.json()["detail"]
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:  # promises a body, sends none
            slow.sendall(b"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 50\r\n\r\n{\"prompt\":")
            reply = slow.recv(4096).decode()
        assert reply.startswith("HTTP/1.1 408") and "did not arrive within 1 s" in reply
        assert requests.post(f"{url}/sdapi/v1/txt2img", json={"prompt": PROMPT}, timeout=60).status_code == 200


def test_api_key(pipe):
    openai = pytest.importorskip("openai")
    with running_server(pipe, api_key="s3cret") as (url, _):
        assert requests.get(f"{url}/health", timeout=10).status_code == 200  # health stays open (probes)
        missing = requests.post(f"{url}/sdapi/v1/txt2img", json={"prompt": PROMPT}, timeout=10)
        wrong = requests.get(f"{url}/metrics", headers={"Authorization": "Bearer s3cre"}, timeout=10)
        other_scheme = requests.get(f"{url}/metrics", headers={"Authorization": "Basic s3cret"}, timeout=10)
        assert missing.status_code == wrong.status_code == other_scheme.status_code == 401
        assert missing.json()["detail"] == wrong.json()["detail"]  # which part was wrong is not said
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="nope", max_retries=0).images.generate(prompt=PROMPT)
        good = openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret", max_retries=0).images.generate(prompt=PROMPT)
        assert len(good.data) == 1


def test_health_says_loading_then_ready_and_names_a_failed_load(pipe, tmp_path, monkeypatch):
    import latentrt.serve.app as serve_app

    gate = threading.Event()
    real = serve_app.load_pipeline
    monkeypatch.setattr(serve_app, "load_pipeline", lambda options: (gate.wait(60), real(options))[1])
    with running_server(wait=False) as (url, _):
        loading = requests.get(f"{url}/health", timeout=10)
        refused = requests.post(f"{url}/v1/images/generations", json={"prompt": PROMPT}, timeout=10)
        gate.set()
        assert loading.status_code == 503 and loading.json()["status"] == "loading"
        assert refused.status_code == 503 and "still loading" in refused.json()["error"]["message"]
        for _ in range(300):
            if requests.get(f"{url}/health", timeout=10).status_code == 200:
                break
            time.sleep(0.1)
        assert requests.get(f"{url}/health", timeout=10).json()["status"] == "ready"
    with running_server(model=str(tmp_path)) as (url, _):
        failed = requests.get(f"{url}/health", timeout=10)
        assert failed.status_code == 503 and "not an ONNX model folder" in failed.json()["error"]


# --- the command: start, serve, graceful shutdown; Ray Serve ------------------------------------------------
def _start(args: list[str], port: int, timeout: float = 180):
    return start_server(args, port, timeout, capture=True)


def test_sigterm_finishes_running_requests_and_refuses_new_ones():
    port = free_port()
    process = _start(["--provider", "cpu"], port)
    url = f"http://127.0.0.1:{port}"
    try:
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(requests.post, f"{url}/v1/images/generations",
                                  json={"prompt": PROMPT, "steps": 100, "size": "256x256"}, timeout=300)
            time.sleep(1.5)
            process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            with pytest.raises(requests.ConnectionError):
                requests.get(f"{url}/health", timeout=5)
            assert running.result().status_code == 200
        output, _ = process.communicate(timeout=60)
        # uvicorn re-raises the signal once it has shut down gracefully: the exit status is SIGTERM's
        assert process.returncode in (0, -signal.SIGTERM) and "Application shutdown complete" in output, output
        assert "127.0.0.1" in output and "this machine only" in output  # says where it listens
    finally:
        process.kill()


def _keep_reading(process: subprocess.Popen) -> list[str]:
    """Read the server's output as it comes (Ray logs every request; an unread pipe fills and stalls the server)."""
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True).start()
    return lines


def _ready_replicas(url: str, count: int, timeout: float) -> set[str]:
    """Poll GET /health until `count` different replicas have answered ready (each poll goes to one replica). One
    ready answer is not enough: Ray already routes to a replica that is still compiling, which answers 503."""
    ready: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(ready) < count:
        assert time.monotonic() < deadline, f"{len(ready)} of {count} replicas ready after {timeout:g} s"
        try:
            answer = requests.get(f"{url}/health", timeout=30)
            if answer.status_code == 200:
                ready.add(answer.json()["replica"])
        except requests.RequestException:  # too busy to answer in time: ask again
            pass
        time.sleep(0.5)
    return ready


@pytest.mark.slow
def test_ray_serve_two_replicas_lose_no_request():
    """Every request answered, by both replicas. On a loaded machine Ray and the replicas start slowly, so it waits
    for what it needs (both replicas ready, every answer) with deadlines far above the 20 s an idle machine takes."""
    pytest.importorskip("ray", reason="the ray extra: pip install 'latentrt[ray]'")
    port = free_port()
    process = _start(["--ray", "--replicas", "2", "--provider", "cpu"], port, timeout=600)
    output = _keep_reading(process)
    url = f"http://127.0.0.1:{port}"
    try:
        _ready_replicas(url, 2, timeout=600)
        body = {"prompt": PROMPT, "seed": 4}
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: requests.post(f"{url}/v1/images/generations", json=body, timeout=600),
                                    range(24)))
        assert [a.status_code for a in answers] == [200] * 24, [a.text for a in answers if a.status_code != 200]
        replicas = {a.headers["x-latentrt-replica"] for a in answers}
        first = answers[0].json()["data"][0]["b64_json"]
        assert all(a.json()["data"][0]["b64_json"] == first for a in answers)  # same seed, same image everywhere
        print(f"Ray Serve: 24 requests, 24 answered 200, replicas {sorted(replicas)}")
        assert len(replicas) == 2
    finally:
        process.send_signal(signal.SIGINT)  # Ray shuts its local cluster down: given time, it leaves no process behind
        try:
            process.wait(300)
        except subprocess.TimeoutExpired:
            process.kill()
            print("".join(output[-50:]))


# --- queue slots freed at cancel (issue 24, row 7) ---------------------------------------------------------
def _until(condition, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_cancel_frees_the_queue_slot_at_once_and_retry_after_counts_live_jobs(pipe):
    queue = JobQueue(pipe, max_queue=3, max_batch=1)
    try:
        with queue._cond:  # the worker takes nothing while we hold the lock
            jobs = _jobs([1, 2, 3])
            futures = [queue.submit(job) for job in jobs]
            with pytest.raises(Exception, match="3 requests are waiting"):
                queue.submit(_jobs([4])[0])
            queue.cancel(jobs[0])
            jobs[1].cancelled.set()  # flagged without cancel(): dropped at the next submit
            assert queue.depth == 2
            with pytest.raises(Cancelled):
                futures[0].result(0)  # its future is done now, not when the worker reaches it
            late = _jobs([5, 6])
            futures += [queue.submit(job) for job in late]  # the two freed slots
            assert queue.depth == 3 and futures[1].done()
            with pytest.raises(Exception, match="3 requests are waiting") as full:
                queue.submit(_jobs([7])[0])
            assert full.value.retry_after <= math.ceil(3 * queue._seconds_per_job)
        assert [f.result(120).parameters[0].seed for f in futures[2:]] == [3, 5, 6]
        with pytest.raises(Cancelled):
            futures[1].result(0)
    finally:
        queue.close()


def _post_and_leave(port: int, body: dict) -> socket.socket:
    """An OpenAI request sent on a raw socket; the caller closes it without reading the answer."""
    data = json.dumps(body).encode()
    connection = socket.create_connection(("127.0.0.1", port), timeout=10)
    connection.sendall(b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n" % len(data) + data)
    return connection


def test_cancelled_requests_do_not_hold_queue_slots_behind_a_long_job(pipe):
    with running_server(pipe, max_batch=1, max_queue=4) as (url, state):
        port = int(url.rsplit(":", 1)[1])
        slow = {"prompt": PROMPT, "steps": 80, "size": "192x192", "seed": 1}
        with ThreadPoolExecutor(2) as pool:
            busy = pool.submit(requests.post, f"{url}/v1/images/generations", json=slow, timeout=300)
            assert _until(lambda: state.queue._running)
            for _ in range(3):  # 12 clients, 4 at a time (--max-queue 4), submit and go away
                clients = [_post_and_leave(port, {"prompt": PROMPT2, "seed": i}) for i in range(4)]
                assert _until(lambda: state.queue.depth == 4)
                for client in clients:
                    client.close()
                assert _until(lambda: state.queue.depth == 0, timeout=5)  # freed at cancel
            assert not busy.done()  # the long job still runs
            real = pool.submit(requests.post, f"{url}/v1/images/generations", json={"prompt": PROMPT2, "seed": 2},
                               timeout=300)
            assert real.result().status_code == 200
            assert busy.result().status_code == 200
        assert metric(url, 'latentrt_errors_total{kind="cancelled"}') == 12
        assert metric(url, "latentrt_images_total") == 2  # the cancelled requests made no image


# --- connections, leaks, error shapes, the API key, /docs (issue 24) ----------------------------------------
@contextmanager
def guarded_server(pipe: Pipeline | None = None, **options):
    """As running_server, with `latentrt serve`'s uvicorn config (the connection guard in the transport)."""
    from latentrt.serve import server_config

    port = free_port()
    app = create_app(ServeOptions(provider="cpu", precision="fp32", **options), pipe=pipe)
    server = uvicorn.Server(server_config(app, "127.0.0.1", port, "warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    assert _until(lambda: _status(f"{url}/health") is not None, timeout=60)
    try:
        yield url, app.state.latentrt
    finally:
        server.should_exit = True
        thread.join(30)


def _status(url: str, **kwargs) -> int | None:
    try:
        return requests.get(url, timeout=5, **kwargs).status_code
    except requests.ConnectionError:
        return None


def test_slow_and_idle_sockets_do_not_lock_out_other_clients(pipe):
    """Row 2: 130 sockets sending a request head a byte at a time and 128 silent ones, past --max-connections:
    other clients are served at once; the slow ones are closed at the header timeout (or evicted, oldest first)."""
    with guarded_server(pipe, max_connections=32, header_timeout_s=2.0, max_batch=1) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        slow = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(130)]
        idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(128)]
        try:
            for connection in slow:
                connection.sendall(b"G")
            times = []
            for path in ("/health", "/sdapi/v1/samplers", "/health"):
                start = time.perf_counter()
                assert requests.get(f"{url}{path}", timeout=5).status_code == 200
                times.append(time.perf_counter() - start)
            assert max(times) < 1.0, times
            time.sleep(2.5)  # past the header timeout: every slow or idle socket has been closed by the server
            for connection in slow + idle:
                try:
                    connection.sendall(b"E")
                    assert connection.recv(100) == b""
                except (ConnectionResetError, BrokenPipeError):
                    pass
            closed = metric(url, 'latentrt_errors_total{kind="header_timeout"}') + \
                metric(url, 'latentrt_errors_total{kind="connections_evicted"}')
            assert closed >= 258
        finally:
            for connection in slow + idle:
                connection.close()


def test_connection_cap_answers_json_503_and_still_serves_health(pipe):
    """Row 2 and 11: past --max-connections requests in progress, JSON 503 with Retry-After, counted; /health answers."""
    with guarded_server(pipe, max_connections=2, body_timeout_s=5, max_batch=1) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        holders = []  # two requests in progress: heads sent, bodies never
        for _ in range(2):
            connection = socket.create_connection(("127.0.0.1", port), timeout=10)
            connection.sendall(b"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
            holders.append(connection)
        try:
            assert _until(lambda: requests.get(f"{url}/sdapi/v1/samplers", timeout=5).status_code == 503, timeout=5)
            answer = requests.get(f"{url}/sdapi/v1/samplers", timeout=5)
            assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
            assert answer.json()["error"] == "overloaded"
            openai = requests.post(f"{url}/v1/images/generations", json={"prompt": PROMPT}, timeout=5)
            assert openai.status_code == 503 and openai.json()["error"]["code"] == "overloaded"
            assert requests.get(f"{url}/health", timeout=5).status_code == 200
        finally:
            for connection in holders:
                connection.close()
        assert _until(lambda: requests.get(f"{url}/sdapi/v1/samplers", timeout=5).status_code == 200, timeout=10)
        assert metric(url, 'latentrt_requests_total{route="/sdapi/v1/samplers",status="503"}') >= 2
        assert metric(url, 'latentrt_errors_total{kind="overloaded"}') >= 3


def test_answers_carry_no_paths_pids_or_addresses(pipe, tmp_path):
    """Row 10: sd-models names the model, /health without the key says only its status, the replica is not the
    PID, Pillow's messages lose their object addresses, a failed load's error loses its path."""
    import os

    key = {"Authorization": "Bearer k"}
    with running_server(pipe, api_key="k", max_batch=1) as (url, _):
        model = requests.get(f"{url}/sdapi/v1/sd-models", headers=key, timeout=10).json()[0]
        assert model["filename"] == "shapes"
        health = requests.get(f"{url}/health", timeout=10)
        assert health.json() == {"status": "ready"}
        replica = health.headers["x-latentrt-replica"]
        assert str(os.getpid()) not in replica and socket.gethostname() not in replica
        full = requests.get(f"{url}/health", headers=key, timeout=10).json()
        assert full["model"] == "shapes" and full["replica"] == replica
        bad = base64.b64encode(b"not an image at all").decode()
        answer = requests.post(f"{url}/sdapi/v1/img2img", json={"prompt": PROMPT, "init_images": [bad]},
                               headers=key, timeout=10)
        assert answer.status_code == 422 and "init_images" in answer.text
        assert " at 0x" not in answer.text, answer.text
    missing = tmp_path / "models" / "no-such-model"
    missing.mkdir(parents=True)
    with running_server(model=str(missing), api_key="k") as (url, _):
        assert requests.get(f"{url}/health", timeout=10).json() == {"status": "failed"}
        failed = requests.get(f"{url}/health", headers=key, timeout=10).json()
        assert failed["status"] == "failed" and failed["error"]
        assert str(tmp_path) not in failed["error"] and "no-such-model" in failed["error"], failed["error"]
        refused = requests.post(f"{url}/v1/images/generations", json={"prompt": PROMPT}, headers=key, timeout=10)
        assert refused.status_code == 503 and str(tmp_path) not in refused.text


def test_every_error_in_the_apis_own_shape(server):
    """Row 11: FastAPI's own 404 and 405 in OpenAI's shape under /v1 and A1111's under /sdapi, counted."""
    url, _ = server
    missing = requests.get(f"{url}/v1/models/none", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert missing.json()["error"]["message"]
    import openai

    with pytest.raises(openai.NotFoundError, match="no such route"):  # the SDK shows the message
        openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0).models.list()
    method = requests.get(f"{url}/v1/images/generations", timeout=10)
    assert method.status_code == 405 and method.json()["error"]["code"] == "method_not_allowed"
    assert "POST" in method.headers["allow"]
    a1111 = requests.get(f"{url}/sdapi/v1/txt2img", timeout=10)
    assert a1111.status_code == 405 and a1111.json()["error"] == "method_not_allowed" and a1111.json()["detail"]
    assert metric(url, 'latentrt_requests_total{route="other",status="404"}') >= 1
    assert metric(url, 'latentrt_errors_total{kind="method_not_allowed"}') >= 2


def test_api_key_must_be_printable_ascii():
    """Row 12: a key clients encode differently (UTF-8 or Latin-1) is refused at start, with the reason."""
    with pytest.raises(ValueError, match="ASCII"):
        create_app(ServeOptions(api_key="clé"))
    with pytest.raises(ValueError, match="ASCII"):
        create_app(ServeOptions(api_key="two words"))
    from typer.testing import CliRunner

    from latentrt.cli import app as cli

    result = CliRunner().invoke(cli, ["serve", "--api-key", "clé"])
    assert result.exit_code == 2 and "ASCII" in result.output


def test_docs_page_carries_its_schema(pipe):
    """Row 15: with --api-key the page gets the schema inline (a browser cannot send the key for /openapi.json)."""
    with running_server(pipe, api_key="k", max_batch=1) as (url, _):
        assert requests.get(f"{url}/docs", timeout=10).status_code == 401
        page = requests.get(f"{url}/docs", headers={"Authorization": "Bearer k"}, timeout=10)
        assert page.status_code == 200 and "/v1/images/generations" in page.text
        assert "/openapi.json" not in page.text


# --- admission before work, unicode and numbers (issue 24, rows 1, 4, 5, 6, 8, 9, 13) -------------------------
def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20  # the server runs in this process


def _big_png(side: int) -> bytes:
    """A valid grey PNG of side x side made without holding its pixels: a few KB that decode to side² bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    packer, row = zlib.compressobj(9), bytes(side + 1)  # filter byte 0, then side zero pixels
    data = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


@pytest.fixture
def decoded(monkeypatch):
    """Every uploaded image the server decodes (generation.admit decodes only what passed its header checks)."""
    from latentrt.serve.inputs import Upload

    calls = []
    real = Upload.decode

    def spy(self, max_pixels):
        calls.append(self.field)
        return real(self, max_pixels)

    monkeypatch.setattr(Upload, "decode", spy)
    return calls


def test_img2img_asking_for_8192_squared_is_refused_before_the_image_is_decoded(server, decoded):  # row 1
    url, _ = server
    before = _rss_mb()
    body = {"prompt": PROMPT, "init_images": [b64png(Image.new("RGB", (64, 64), "white"))], "width": 8192, "height": 8192}
    answer = requests.post(f"{url}/sdapi/v1/img2img", json=body, timeout=60)
    assert answer.status_code == 422, answer.text
    assert "8192x8192 is 67,108,864 pixels, over this server's --max-pixels=1,048,576" in answer.json()["detail"]
    assert "largest size that fits at this aspect ratio is 1024x1024" in answer.json()["detail"]
    assert decoded == [] and _rss_mb() - before < 50
    assert ServeOptions().max_pixels == 1024 * 1024  # the default refuses it
    small = requests.post(f"{url}/sdapi/v1/img2img", json=dict(body, width=64, height=64, steps=2), timeout=60)
    assert small.status_code == 200 and decoded == ["init_images[0]"]  # what passes is decoded (off the event loop)


def test_an_image_that_decodes_past_max_input_pixels_is_refused_by_its_header(server, decoded):  # row 4
    url, _ = server
    bomb = _big_png(10000)
    assert len(bomb) < 200_000 and Image.open(io.BytesIO(bomb)).size == (10000, 10000)
    before = _rss_mb()
    for field in ("init_images", "mask"):
        body = {"prompt": PROMPT, "init_images": [b64png(Image.new("RGB", (64, 64)))]}
        body["init_images" if field == "init_images" else "mask"] = [base64.b64encode(bomb).decode()] \
            if field == "init_images" else base64.b64encode(bomb).decode()
        answer = requests.post(f"{url}/sdapi/v1/img2img", json=body, timeout=60)
        assert answer.status_code == 413, answer.text
        detail = answer.json()["detail"]
        assert "is 10000x10000 = 100,000,000 pixels, over this server's --max-input-pixels=16,777,216" in detail
        assert detail.startswith("init_images[0]" if field == "init_images" else "mask")
    assert decoded == [] and _rss_mb() - before < 50
    assert requests.get(f"{url}/health", timeout=10).status_code == 200


def test_text_fields_are_bounded_on_every_route(server):  # row 5
    url, _ = server
    before = _rss_mb()
    for route, field, length in (("/v1/images/generations", "negative_prompt", 5000), ("/v1/images/generations", "model", 5000),
                                 ("/sdapi/v1/txt2img", "negative_prompt", 2**20), ("/sdapi/v1/txt2img", "sampler_name", 2**20)):
        answer = requests.post(f"{url}{route}", json={"prompt": PROMPT, field: "x" * length}, timeout=60)
        assert answer.status_code == 422, answer.text
        message = answer.json()["error"]["message"] if route.startswith("/v1/") else answer.json()["detail"]
        assert f"{field}: Value error, has {length:,} characters, at most 4000 are accepted: shorten it" in message
    assert _rss_mb() - before < 50  # (this process is the server's too: the clients below send no large body)
    # the OpenAI route carries text only: a 24 MiB body is refused from its Content-Length, before it is read
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
        client.sendall(b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Content-Length: 25165824\r\n\r\n{\"prompt\": \"x\", \"n\": 8, \"negative_prompt\": \"xxxx")
        reply = client.recv(4096).decode()
    assert reply.startswith("HTTP/1.1 413") and "this route takes text fields only" in reply, reply
    ok = requests.post(f"{url}/v1/images/generations", json={"prompt": PROMPT, "negative_prompt": "x" * 4000, "steps": 1},
                       timeout=60)
    assert ok.status_code == 200, ok.text


def test_compute_is_bounded_by_default_and_a_request_has_a_deadline(server, pipe):  # row 6
    url, _ = server
    defaults = ServeOptions()
    assert (defaults.max_pixels, defaults.max_steps, defaults.timeout_s) == (1024 * 1024, 150, 600.0)
    answer = requests.post(f"{url}/v1/images/generations", json={"prompt": PROMPT, "steps": 1000}, timeout=60)
    assert answer.status_code == 422 and answer.json()["error"]["code"] == "too_many_steps"
    assert "steps must be at most 150 on this server (--max-steps), got 1000" in answer.json()["error"]["message"]
    answer = requests.post(f"{url}/sdapi/v1/txt2img", json={"prompt": PROMPT, "width": 7240, "height": 7240}, timeout=60)
    assert answer.status_code == 422 and "over this server's --max-pixels=1,048,576" in answer.json()["detail"]
    with running_server(pipe, max_batch=1, timeout_s=1.0) as (slow_url, state):
        start = time.monotonic()
        answer = requests.post(f"{slow_url}/v1/images/generations",
                               json={"prompt": PROMPT, "steps": 150, "size": "256x256", "n": 8}, timeout=60)
        assert answer.status_code == 504 and time.monotonic() - start < 5, answer.text
        assert answer.json()["error"]["code"] == "timeout"
        assert "did not finish within 1 s (this server's --timeout)" in answer.json()["error"]["message"]
        assert _until(lambda: not state.queue._running and state.queue.depth == 0, timeout=10)  # stopped at its next step
        assert metric(slow_url, "latentrt_images_total") == 0
        fast = requests.post(f"{slow_url}/v1/images/generations", json={"prompt": PROMPT, "steps": 1}, timeout=60)
        assert fast.status_code == 200


def test_unencodable_text_is_422_before_queueing(server):  # row 8
    url, _ = server
    images = metric(url, "latentrt_images_total")
    for route, field in (("/v1/images/generations", "negative_prompt"), ("/v1/images/generations", "model"),
                         ("/v1/images/generations", "prompt"), ("/sdapi/v1/txt2img", "negative_prompt"),
                         ("/sdapi/v1/txt2img", "scheduler")):
        answer = requests.post(f"{url}{route}", json={"prompt": PROMPT, field: "ok \ud800"}, timeout=60)
        assert answer.status_code == 422, answer.text
        message = answer.json()["error"]["message"] if route.startswith("/v1/") else answer.json()["detail"]
        assert f"{field}: Value error, is not valid Unicode text (character 3 is a lone surrogate '\\ud800'): send " \
               "UTF-8 text" in message
    assert metric(url, "latentrt_images_total") == images  # refused before any work
    assert metric(url, 'latentrt_errors_total{kind="validation"}') >= 5


def test_guidance_is_bounded_before_queueing(server, pipe):  # row 9
    url, _ = server
    for route, field in (("/v1/images/generations", "guidance_scale"), ("/sdapi/v1/txt2img", "cfg_scale")):
        answer = requests.post(f"{url}{route}", json={"prompt": PROMPT, field: 1e308}, timeout=60)
        assert answer.status_code == 422, answer.text
        message = answer.json()["error"]["message"] if route.startswith("/v1/") else answer.json()["detail"]
        assert "guidance_scale must be a finite number >= 0 and <= 100" in message and "got 1e+308" in message
    with pytest.raises(ValueError, match="<= 100"):  # the Python API's (and the CLI's) own check
        pipe.check(Request(PROMPT, guidance_scale=101))
    assert requests.post(f"{url}/v1/images/generations", json={"prompt": PROMPT, "guidance_scale": 100, "steps": 1},
                         timeout=60).status_code == 200


def test_the_openai_model_field_names_the_served_model_and_is_never_echoed(server):  # row 13
    url, _ = server
    answer = requests.post(f"{url}/v1/images/generations", json={"prompt": PROMPT, "model": "/etc/passwd"}, timeout=60)
    assert answer.status_code == 404, answer.text
    error = answer.json()["error"]
    assert error["code"] == "model_not_found" and error["type"] == "invalid_request_error"
    assert error["message"] == "this server serves one model, 'shapes': send \"model\": \"shapes\" or leave model out"
    assert "passwd" not in answer.text
    for model in ("shapes", None):
        body = {"prompt": PROMPT, "steps": 1} | ({"model": model} if model else {})
        ok = requests.post(f"{url}/v1/images/generations", json=body, timeout=60)
        assert ok.status_code == 200 and ok.json()["model"] == "shapes"
