"""External auxiliary models: an open-vocabulary detector, an image–text
scorer and a part-of-speech tagger, loaded from LOCAL weights through their real loaders.

HALC (``BillChan226/HALC@12ea8b5``) needs all three; each sits behind a one-method interface so a
method never sees the library:

* :class:`Detector` — ``detect(image, phrase) -> [[x0, y0, x1, y1], ...]`` boxes normalised to
  [0, 1] (GroundingDINO or OWLv2 through transformers' ``AutoModelForZeroShotObjectDetection`` +
  ``AutoProcessor``). Post-processing follows HALC's GroundingDINO wrapper
  (``decoder_zoo/HALC/context_density/detector.py``): box score ≥ ``box_threshold`` (HALC 0.45:
  ``run_scripts/caption_generation.py:175``), text score ≥ ``text_threshold`` (GroundingDINO only,
  ``TEXT_TRESHOLD`` = 0.4, ``detector.py:31``), boxes with area < 0.01 of the image dropped
  (``AREA_THRESHOLD``, ``detector.py:33,66-69``), a box with IoU > 0.6 to a kept one dropped
  (``IOU_THRESHOLD``, ``detector.py:36,39-47,71-72``), coordinates clipped to [0, 1] and rounded
  to 3 decimals (``detector.py:55-57``). Divergence: HALC runs the original GroundingDINO code
  (``groundingdino.util.inference.predict`` with its own CUDA op); here the transformers port
  (``IDEA-Research/grounding-dino-tiny``/``-base``; SwinT-OGC's weights are the tiny model) or
  OWLv2 (``google/owlv2-base-patch16-ensemble``, HALC's ``--detector owlv2`` alternative,
  ``halc.py:54-60,313-337``; there HALC keeps every box above 0.05 of the *padded square*
  frame; here OWLv2 boxes go through the same thresholds and are mapped back to the image).
* :class:`ImageTextScorer` — ``similarity(image, texts) -> tensor [len(texts)]``: the model's
  ``logits_per_image`` (HALC: ``BlipModel`` from ``Salesforce/blip-image-captioning-large`` with
  ``score_type="BLIP"``, ``halc.py:124-128,1157-1168``; or CLIP ``openai/clip-vit-base-patch32``;
  texts are truncated to the model's positions — for CLIP's 77, HALC instead widens the position
  table with random rows when ``max_new_tokens`` > 77, ``halc.py:104-118``).
* :class:`Tagger` — ``pos(word) -> str`` (the coarse POS of the word's first token, as
  ``halc.py:250-263`` reads ``doc[0].pos_``) and ``nouns(text) -> [tokens]``: spaCy loaded from a
  local model folder (HALC: ``en_core_web_sm``, ``halc.py:68``); a folder holding
  ``word_tags.json`` loads as :class:`WordTagger` (a word list, no spaCy: the workflow tests'
  stand-in, not HALC's tagger).

``resolve(kind, spec)`` turns a method parameter into a loaded model: a local folder (loaded once
per process and cached), or a name given to :func:`register` (in-process objects: the tests'
tiny stand-ins). Nothing is downloaded here: ``workflow/rules/halc.smk`` fetches the weights.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Sequence

import torch

KINDS = ("detector", "scorer", "tagger")
_REGISTRY: dict[tuple[str, str], Any] = {}
_LOADED: dict[tuple[str, str], Any] = {}


# --- detector ----------------------------------------------------------------------------------
def box_area(b: Sequence[float]) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = box_area(a) + box_area(b) - inter
    return inter / union if union > 0 else 0.0


def filter_boxes(
    boxes: Sequence[Sequence[float]], area_threshold: float = 0.01, iou_threshold: float = 0.6
) -> list[list[float]]:
    """HALC's ``extract_detection`` filters on normalised boxes (in detection order): clip to
    [0, 1], round to 3 decimals, drop area < ``area_threshold`` and IoU > ``iou_threshold``
    with an already kept box."""
    kept: list[list[float]] = []
    for b in boxes:
        nb = [round(min(1.0, max(0.0, float(v))), 3) for v in b]
        if box_area(nb) < area_threshold:
            continue
        if any(box_iou(nb, k) > iou_threshold for k in kept):
            continue
        kept.append(nb)
    return kept


class Detector:
    """Open-vocabulary detector over a transformers zero-shot detection model and its processor."""

    def __init__(
        self,
        model,
        processor,
        box_threshold: float = 0.45,
        text_threshold: float = 0.4,
        area_threshold: float = 0.01,
        iou_threshold: float = 0.6,
    ):
        self.model = model.eval()
        self.processor = processor
        self.box_threshold = float(box_threshold)
        self.text_threshold = float(text_threshold)
        self.area_threshold = float(area_threshold)
        self.iou_threshold = float(iou_threshold)
        self.model_type = getattr(model.config, "model_type", "")

    @classmethod
    def from_dir(cls, path: str | Path, **kw) -> "Detector":
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"detector weights not found: {path} (run the halc download rules)")
        model = AutoModelForZeroShotObjectDetection.from_pretrained(path, local_files_only=True)
        return cls(model, AutoProcessor.from_pretrained(path, local_files_only=True), **kw)

    def raw_boxes(self, image, phrase: str, box_threshold: float | None = None) -> list[list[float]]:
        """Boxes above the thresholds, normalised to the image, in the post-processor's order."""
        thr = self.box_threshold if box_threshold is None else float(box_threshold)
        W, H = image.size
        owl = self.model_type.startswith("owl")
        if owl:
            inputs = self.processor(text=[[phrase]], images=image, return_tensors="pt")
            side = max(W, H)  # OWLv2 pads to a square at the bottom/right: pixel frame of the padded image
            target = [(side, side)]
        else:
            # GroundingDINO's caption convention: lower case, ending with "."
            text = phrase.lower().strip()
            inputs = self.processor(
                text=text if text.endswith(".") else text + ".", images=image, return_tensors="pt"
            )
            target = [(H, W)]
        dev = next(self.model.parameters()).device
        inputs = {k: v.to(dev) if torch.is_tensor(v) else v for k, v in inputs.items()}
        with torch.no_grad():
            out = self.model(**inputs)
        post = self.processor.post_process_grounded_object_detection
        kw: dict[str, Any] = {"threshold": thr, "target_sizes": target}
        params = inspect.signature(post).parameters
        if "input_ids" in params and "input_ids" in inputs:
            kw["input_ids"] = inputs["input_ids"]
        if "text_threshold" in params and not owl:
            kw["text_threshold"] = self.text_threshold
        res = post(out, **kw)[0]
        boxes = res["boxes"].detach().float().cpu().tolist()
        return [[b[0] / W, b[1] / H, b[2] / W, b[3] / H] for b in boxes]

    def detect(self, image, phrase: str, box_threshold: float | None = None) -> list[list[float]]:
        return filter_boxes(
            self.raw_boxes(image, phrase, box_threshold), self.area_threshold, self.iou_threshold
        )


# --- image-text scorer -------------------------------------------------------------------------
class ImageTextScorer:
    """Image–text similarity over a CLIP-like dual encoder (``BlipModel``, ``CLIPModel``)."""

    def __init__(self, model, processor, max_length: int | None = None):
        self.model = model.eval()
        self.processor = processor
        self.max_length = max_length

    @classmethod
    def from_dir(cls, path: str | Path, **kw) -> "ImageTextScorer":
        from transformers import AutoConfig, AutoProcessor, BlipModel, CLIPModel

        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"scorer weights not found: {path} (run the halc download rules)")
        mtype = AutoConfig.from_pretrained(path, local_files_only=True).model_type
        # blip-image-captioning-large is a BlipForConditionalGeneration checkpoint; HALC loads it as
        # BlipModel (halc.py:125): the text/vision encoders and projections load, the LM head is unused
        model_cls = {"blip": BlipModel, "clip": CLIPModel}.get(mtype)
        if model_cls is None:
            raise ValueError(f"scorer at {path}: model type {mtype!r} is not a BLIP or CLIP model")
        model = model_cls.from_pretrained(path, local_files_only=True)
        return cls(model, AutoProcessor.from_pretrained(path, local_files_only=True), **kw)

    def similarity(self, image, texts: Sequence[str]) -> torch.Tensor:
        """``logits_per_image[0]`` for ``texts`` against ``image`` (float32, CPU)."""
        kw: dict[str, Any] = {"padding": True, "truncation": True}
        if self.max_length is not None:
            kw["max_length"] = self.max_length
        inputs = self.processor(text=list(texts), images=image, return_tensors="pt", **kw)
        dev = next(self.model.parameters()).device
        inputs = {
            k: v.to(dev) for k, v in inputs.items() if k in ("input_ids", "attention_mask", "pixel_values")
        }
        with torch.no_grad():
            out = self.model(**inputs)
        return out.logits_per_image[0].detach().float().cpu()


# --- POS tagger ----------------------------------------------------------------------------------
class Tagger:
    """spaCy pipeline: ``pos(word)`` = coarse POS of the first token ("PUNC" when there is none)."""

    def __init__(self, nlp):
        self.nlp = nlp

    @classmethod
    def from_dir(cls, path: str | Path):
        """spaCy model folder; a folder with ``word_tags.json`` loads as a :class:`WordTagger`."""
        if (Path(path) / "word_tags.json").is_file():
            return WordTagger.from_dir(path)
        try:
            import spacy
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("the POS tagger needs spaCy: .venv/bin/pip install -e '.[amber]'") from e
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"spaCy model not found: {path} (run the halc download rules)")
        return cls(spacy.load(path))

    def pos(self, word: str) -> str:
        doc = self.nlp(word)
        return doc[0].pos_ if len(doc) else "PUNC"

    def nouns(self, text: str) -> list[str]:
        return [t.text for t in self.nlp(text) if t.pos_ in ("NOUN", "PROPN")]


class WordTagger:
    """A word-list POS tagger without spaCy (NOT HALC's tagger: for stand-ins and checks): a folder
    with ``word_tags.json`` = ``{"default": POS, "tags": {word: POS}}``; ``pos(word)`` looks up the
    first whitespace token, lower-cased ("PUNC" for none, "PUNCT" when not alphabetic)."""

    def __init__(self, tags: dict, default: str = "NOUN"):
        self.tags = {str(k).lower(): str(v) for k, v in tags.items()}
        self.default = str(default)

    @classmethod
    def from_dir(cls, path: str | Path) -> "WordTagger":
        import json

        spec = json.loads((Path(path) / "word_tags.json").read_text(encoding="utf-8"))
        return cls(spec.get("tags", {}), spec.get("default", "NOUN"))

    def pos(self, word: str) -> str:
        parts = word.split()
        if not parts:
            return "PUNC"
        w = parts[0]
        return self.tags.get(w.lower(), self.default if w.isalpha() else "PUNCT")

    def nouns(self, text: str) -> list[str]:
        return [w for w in text.split() if self.pos(w) in ("NOUN", "PROPN")]


LOADERS = {"detector": Detector.from_dir, "scorer": ImageTextScorer.from_dir, "tagger": Tagger.from_dir}


# --- resolution ----------------------------------------------------------------------------------
def register(kind: str, name: str, obj) -> None:
    """Make ``obj`` (anything with the kind's interface) available to :func:`resolve` as ``name``."""
    if kind not in KINDS:
        raise ValueError(f"unknown auxiliary model kind {kind!r}; kinds: {', '.join(KINDS)}")
    _REGISTRY[(kind, str(name))] = obj


def resolve(kind: str, spec, **kw):
    """A loaded auxiliary model of ``kind`` from ``spec``: a registered name, an object with the
    interface (returned as is), or a local folder (loaded once per process)."""
    if kind not in KINDS:
        raise ValueError(f"unknown auxiliary model kind {kind!r}; kinds: {', '.join(KINDS)}")
    if spec is None:
        raise ValueError(f"no {kind} given (a local model folder or a registered name)")
    if not isinstance(spec, (str, Path)):
        return spec
    key = (kind, str(spec))
    if key in _REGISTRY:
        return _REGISTRY[key]
    if key not in _LOADED:
        _LOADED[key] = LOADERS[kind](spec, **kw)
    return _LOADED[key]


__all__ = [
    "Detector",
    "ImageTextScorer",
    "Tagger",
    "WordTagger",
    "filter_boxes",
    "box_iou",
    "box_area",
    "register",
    "resolve",
]
