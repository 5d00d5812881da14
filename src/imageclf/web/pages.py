"""HTML pages: the upload form (``/``) and the result page (``POST /predict``): one
picture's answer with Grad-CAM, or a list when several were sent together.

Both work without JavaScript; ``static/app.js`` adds preview, drag-and-drop, paste
and a size check before anything is sent.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path

from flask import (
    Blueprint,
    current_app,
    g,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from PIL import Image
from werkzeug.exceptions import BadRequest
from werkzeug.wrappers import Response

from ..imaging import WEB_FORMATS, format_extensions, format_mime_type
from .extensions import get_metrics, get_service
from .feedback import feedback_enabled, read_page_answer, record
from .label_results import threshold_for
from .models import Loaded
from .pictures import display_copy, png_data_url
from .service import Prediction
from .uploads import MB, Upload, collect_uploads

bp = Blueprint("pages", __name__)

TOP_K = 5
# Pictures one page upload may hold (a list of results; the API takes more). Each comes
# back as a small PNG, so the page stays a few MB at most.
PAGE_MAX_FILES = 16
THUMB_SIZE = 160
# How a format is spelled for people where Pillow's name reads oddly.
_DISPLAY_NAMES = {"WEBP": "WebP"}
EXAMPLE_SUFFIXES = (".jpg", ".jpeg", ".png")


@cache
def examples() -> dict[str, Path]:
    """Shipped example images by name; a posted ``example`` must be one of these keys."""
    folder = Path(str(resources.files("imageclf") / "web" / "static" / "examples"))
    if not folder.is_dir():
        return {}
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in EXAMPLE_SUFFIXES)
    return {p.stem: p for p in files}


def model_examples() -> dict[str, Path]:
    """The shipped examples whose label is one of the served model's classes: a user's
    ants/bees model shows no CIFAR-10 airplane (and none at all until the model loaded)."""
    summary = _model_summary()
    classes = set(summary["classes"]) if summary else set()
    return {name: path for name, path in examples().items() if name.split("-")[0] in classes}


@cache
def accepted_formats() -> dict[str, str]:
    """What the upload form accepts, all derived from ``imaging.WEB_FORMATS``:
    the ``accept`` attribute, the names shown, and extension -> format for app.js."""
    extensions = {ext: fmt.lower() for fmt in WEB_FORMATS for ext in format_extensions(fmt)}
    mime = [format_mime_type(fmt) for fmt in WEB_FORMATS]
    return {
        "accept": ",".join([m for m in mime if m] + sorted(extensions)),
        "formats": ", ".join(_DISPLAY_NAMES.get(f, f) for f in WEB_FORMATS),
        "allowed": ",".join(f.lower() for f in WEB_FORMATS),
        "extensions": ",".join(f"{ext.lstrip('.')}:{fmt}" for ext, fmt in extensions.items()),
    }


def _model_summary() -> dict | None:
    service = get_service()
    return service.describe() if service.ready else None


@bp.app_context_processor
def inject_model() -> dict:
    """Every page's footer names the model (once it is loaded)."""
    return {"model": _model_summary()}


def render_index(error: str | None = None, error_title: str | None = None) -> str:
    """The upload page, optionally with an error message above the form."""
    max_bytes = int(current_app.config["IMAGECLF_MAX_UPLOAD_BYTES"])
    return render_template(
        "index.html",
        examples=[
            {"name": name, "label": name.split("-")[0], "file": f"examples/{path.name}"}
            for name, path in model_examples().items()
        ],
        error=error,
        error_title=error_title,
        max_bytes=max_bytes,
        max_mb=max_bytes // MB,
        max_files=min(PAGE_MAX_FILES, int(current_app.config["IMAGECLF_MAX_FILES"])),
        # The model picker: shown only when several models are served.
        choices=list(get_service().slots) if len(get_service().slots) > 1 else [],
        chosen=g.get("chosen_model"),
        **accepted_formats(),
    )


@bp.get("/")
def index() -> str:
    return render_index()


@bp.get("/predict")
def predict_get() -> Response:
    """A bookmarked or reloaded result page: send the user back to the form."""
    return redirect(url_for("pages.index"), code=303)


@bp.post("/predict")
def predict() -> Response:
    """One picture: the result page with Grad-CAM. Several (dropped or chosen together):
    one list, a row per picture, in one forward pass."""
    service = get_service()
    most = min(PAGE_MAX_FILES, int(current_app.config["IMAGECLF_MAX_FILES"]))
    uploads = _example_upload() or collect_uploads(
        request,
        {"file": most},
        max_bytes=current_app.config["IMAGECLF_MAX_UPLOAD_BYTES"],
        max_files=most,
    )
    wait_s = float(current_app.config["IMAGECLF_MODEL_WAIT_S"])
    loaded = _chosen_model(wait_s)
    explain = bool(current_app.config["IMAGECLF_EXPLAIN_PAGES"]) and len(uploads) == 1
    results = service.classify(
        uploads,
        top_k=TOP_K,
        explain=explain,
        client=request.remote_addr or "local",
        model=loaded,
        threshold=threshold_for(loaded.predictor, None),  # serve --threshold, multi-label
    )
    get_metrics().count_predictions([r.top[0][0] for r in results])
    if len(results) > 1:
        return _named(
            render_template(
                "results.html",
                model=service.describe(loaded),
                rows=[_row(r) for r in results],
            ),
            loaded,
        )
    (result,) = results
    label, confidence = result.top[0]
    image_url = png_data_url(display_copy(result.image))
    page = render_template(
        "result.html",
        model=service.describe(loaded),
        filename=result.filename,
        width=result.size[0],
        height=result.size[1],
        image_url=image_url,
        # The form posts back the PNG this page already shows: nothing is uploaded twice
        # or kept before the user answers (web/feedback.py).
        # (Its answers name one class: not offered for a multi-label model's labels.)
        feedback_picture=image_url.partition(",")[2]
        if feedback_enabled() and result.labels is None
        else None,
        small=max(result.image.size) <= 64,
        overlay_url=_overlay_url(result.explanation, result.image.size),
        label=label,
        confidence=confidence,
        top=result.top,
        unsure=result.unsure,
        outside=result.outside,
        gate_mass=result.gate_mass,  # why "outside": the ImageNet gate, or familiarity
        labels=result.labels,  # a multi-label model's: the page lists them instead
        model_view_url=png_data_url(Image.fromarray(result.model_view)),
    )
    return _named(page, loaded)


def _chosen_model(wait_s: float) -> Loaded:
    """The model picked in the form (``model``, a <select> shown when several are
    served); the default when none was picked (or an example was pressed)."""
    name = request.form.get("model") or None
    if name is not None and name not in get_service().slots:
        raise BadRequest("unknown model; choose one of the list")
    g.chosen_model = name  # the picker keeps it when the form comes back with an error
    return get_service().current(name, wait_s)


def _named(page: str, loaded: Loaded) -> Response:
    """The page, with the headers that name the model and version that answered."""
    response = make_response(page)
    response.headers["X-Model-Name"] = loaded.name
    response.headers["X-Model-Version"] = loaded.version
    return response


@bp.post("/feedback")
def feedback() -> str:
    """The result page's answer ("right", "wrong, it is X", "none of these"): thanks."""
    upload, answer, label, shown = read_page_answer()
    stored = record(upload, answer, label, shown, model=request.form.get("model") or None)
    return render_template("feedback_thanks.html", stored=stored)


def _row(result: Prediction) -> dict:
    """One picture's line in the list of several: a small copy, its answer and doubts."""
    label, confidence = result.top[0]
    return {
        "filename": result.filename,
        "thumb_url": png_data_url(display_copy(result.image, THUMB_SIZE)),
        "small": max(result.image.size) <= 64,
        "label": label,
        "confidence": confidence,
        "top": result.top[:3],
        "unsure": result.unsure,
        "outside": result.outside,
        "labels": result.labels,
    }


def _overlay_url(overlay: Image.Image | None, size: tuple[int, int]) -> str | None:
    """Grad-CAM draws on the square model view; stretch it back to the picture's shape so
    it sits beside the upload at the same size."""
    if overlay is None:
        return None
    scale = max(overlay.size) / max(size)
    target = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
    if target != overlay.size:
        overlay = overlay.resize(target, Image.Resampling.BICUBIC)
    return png_data_url(overlay)


def _example_upload() -> list[Upload] | None:
    """The example button that was pressed, if any; only shipped names are accepted."""
    name = request.form.get("example")
    if name is None:
        return None
    path = model_examples().get(name)
    if path is None:
        raise BadRequest("unknown example image")
    return [Upload(path.name, path.read_bytes())]
