"""The per-stage latency budget of one API request, measured in this process with the
app's own functions (1 torch thread, like a server worker), and what the app adds to
an in-process call with the forward pass stubbed out."""

from __future__ import annotations

import statistics
import time

from .timing import time_calls

STAGES = ("read body", "parse multipart", "decode", "resize", "forward", "encode JSON")


def stage_budget(model: str, body: bytes, ctype: str, repeats: int) -> dict:
    """Median microseconds per stage of one API request, run in this process with the
    app's own functions (1 torch thread, like a server worker)."""
    import numpy as np
    from flask import jsonify, request

    from imageclf.web import create_app
    from imageclf.web.extensions import get_service
    from imageclf.web.pictures import DISPLAY_SIZE
    from imageclf.web.uploads import collect_uploads

    app = create_app(model, IMAGECLF_MODEL_LOADING="eager", IMAGECLF_TORCH_THREADS=1)
    service = get_service(app)
    predictor = service.predictor()
    times: dict[str, list[float]] = {name: [] for name in (*STAGES, "whole app (test client)")}
    client = app.test_client()
    for i in range(repeats + 20):
        with app.test_request_context(
            "/api/v1/predict", method="POST", data=body, content_type=ctype
        ):
            t0 = time.perf_counter()
            request.get_data(cache=True, parse_form_data=False)
            t1 = time.perf_counter()
            uploads = collect_uploads(request, {"file": 1})
            t2 = time.perf_counter()
            decoded = service.decode_all(uploads, max(DISPLAY_SIZE, predictor.input_size))
            t3 = time.perf_counter()
            batch = np.stack([predictor.prepare(d.picture) for d in decoded])
            t4 = time.perf_counter()
            probs = predictor.predict_proba(batch)
            t5 = time.perf_counter()
            top = predictor.top(probs[0], 5)
            jsonify(
                {
                    "model": service.describe(predictor),
                    "predictions": [
                        {
                            "filename": uploads[0].filename,
                            "top": [{"label": n, "probability": p} for n, p in top],
                        }
                    ],
                }
            ).get_data()
            t6 = time.perf_counter()
        t7 = time.perf_counter()
        client.post("/api/v1/predict", data=body, content_type=ctype)
        t8 = time.perf_counter()
        if i >= 20:  # after a warm-up
            for name, seconds in zip(
                (*STAGES, "whole app (test client)"),
                (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t8 - t7),
                strict=True,
            ):
                times[name].append(seconds * 1e6)
    budget = {name: round(statistics.median(values), 1) for name, values in times.items()}
    budget["sum of stages"] = round(sum(budget[name] for name in STAGES), 1)
    return budget


def app_overhead(model: str, image: bytes, body: bytes, ctype: str, repeats: int) -> dict:
    """Median microseconds of the app's own WSGI call (no HTTP server, no test client)
    and of ``Predictor.predict``, both with the model's logits replaced by a constant:
    what the app adds to an in-process call, apart from the forward pass itself."""
    import io

    from werkzeug.test import EnvironBuilder

    from imageclf.web import create_app
    from imageclf.web.extensions import get_service

    app = create_app(model, IMAGECLF_MODEL_LOADING="eager", IMAGECLF_TORCH_THREADS=1)
    predictor = get_service(app).predictor()
    constant = predictor._logits(predictor.preprocess(image), False)
    predictor._logits = lambda batch, tta: constant.expand(len(batch), -1)
    environ = EnvironBuilder(
        "/api/v1/predict", method="POST", data=body, content_type=ctype
    ).get_environ()

    def wsgi_call() -> None:
        statuses: list[str] = []
        answer = app.wsgi_app(
            {**environ, "wsgi.input": io.BytesIO(body)}, lambda s, h, e=None: statuses.append(s)
        )
        b"".join(answer)
        answer.close()
        assert statuses[0].startswith("200"), statuses

    def median_us(call) -> float:
        for _ in range(50):
            call()
        return round(statistics.median(time_calls(call, repeats)) * 1e6, 1)

    return {
        "Predictor.predict, logits stubbed": median_us(lambda: predictor.predict(image, top_k=5)),
        "app WSGI call, logits stubbed": median_us(wsgi_call),
    }
