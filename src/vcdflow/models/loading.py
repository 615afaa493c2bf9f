"""Load a vision-language model (model + processor) from a local directory or a hub id.

``load_vlm(name_or_dir)``:

* a local directory written by ``save_pretrained`` (model + processor, e.g. the demo LLaVA or a
  tiny test model) is loaded directly;
* anything else is treated as a Hugging Face hub id and fetched with
  ``huggingface_hub.snapshot_download`` (token from the environment variable ``HF_TOKEN``, never
  logged; ``local_files_only`` defaults to ``HF_HUB_OFFLINE``), then loaded from the snapshot.

The config's ``model_type`` picks the family record (:mod:`vcdflow.models.families`); the model
class comes from the config's ``architectures`` entry (else the record's class), the processor from
``AutoProcessor`` — or, for a family whose processor ships a video processor (transformers builds
those only with torchvision), the record's processor class built image-only from the same folder
(:func:`image_only_processor`). The record's layout selects the adapter in
:mod:`vcdflow.models.adapters`.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .families import BY_MODEL_TYPE, Family, family_of_model_type

log = logging.getLogger(__name__)

#: config ``model_type`` → (family, default model class name), from the family records
FAMILIES: dict[str, tuple[str, str]] = {t: (f.name, f.model_class) for t, f in BY_MODEL_TYPE.items()}

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float64": torch.float64,
}


@dataclass
class VLM:
    """A loaded vision-language model: ``model`` (eval mode), ``processor``, ``family``, ``adapter``
    (family-specific input building, see :mod:`vcdflow.models.adapters`), ``device``, ``dtype``,
    and ``source`` (the local directory the weights came from)."""

    model: Any
    processor: Any
    family: str
    adapter: Any
    device: torch.device
    dtype: torch.dtype
    source: str = ""

    @property
    def tokenizer(self):
        return getattr(self.processor, "tokenizer", self.processor)


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float32" | "bfloat16" | "float16"`` (or a ``torch.dtype``) → ``torch.dtype``."""
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(sorted(_DTYPES))} or a torch.dtype")
    return _DTYPES[key]


from ..validate import check_model_dir, looks_local  # noqa: E402,F401  (no torch there: the CLI checks early)


def _resolve_dir(name_or_dir: str | os.PathLike, revision: str | None, local_files_only: bool | None) -> Path:
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        return check_model_dir(path)
    name = str(name_or_dir)
    if path.exists() or looks_local(name):
        check_model_dir(path)  # raises: missing, or not a directory
    from huggingface_hub import snapshot_download

    if local_files_only is None:
        local_files_only = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    token = os.environ.get("HF_TOKEN") or None
    log.info("fetching %s (revision %s) with snapshot_download", name, revision or "main")
    try:
        snap = snapshot_download(
            repo_id=name, revision=revision, token=token, local_files_only=local_files_only
        )
    except Exception as e:  # noqa: BLE001 - say what was tried, never the token
        raise FileNotFoundError(
            f"{name!r} is not a local directory and could not be fetched from the "
            f"Hugging Face hub ({type(e).__name__}: {e})"
        ) from e
    return Path(snap)


def _model_class(config):
    import transformers

    arch = (getattr(config, "architectures", None) or [None])[0]
    if arch and hasattr(transformers, arch):
        return getattr(transformers, arch)
    return getattr(transformers, family_of_model_type(config.model_type).model_class)


def _load_processor(path: Path, family: Family | str):
    """``AutoProcessor``; for a family whose processor ships a video processor, when that cannot be
    built here (transformers needs torchvision for it), the family's processor image-only."""
    from transformers import AutoProcessor

    from .families import get_family

    family = get_family(family) if isinstance(family, str) else family
    try:
        return AutoProcessor.from_pretrained(path)
    except Exception as e:  # noqa: BLE001
        if not family.video_processor:
            raise
        log.warning(
            "AutoProcessor failed for %s (%s); building an image-only %s",
            path,
            " ".join(str(e).split()).split(". ")[0] or type(e).__name__,
            family.processor_class,
        )
        return image_only_processor(path, family)


_IMAGE_ONLY: dict[str, type] = {}


def _image_only_class(processor_class: str) -> type:
    """``processor_class`` (a transformers processor with a video processor) accepting none."""
    if processor_class not in _IMAGE_ONLY:
        import transformers

        base = getattr(transformers, processor_class)

        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            return base.check_argument_for_proper_class(self, argument_name, argument)

        _IMAGE_ONLY[processor_class] = type(
            f"ImageOnly{processor_class}",
            (base,),
            {
                "check_argument_for_proper_class": check_argument_for_proper_class,
                "__doc__": f"{processor_class} without its video processor (images and text only).",
            },
        )
    return _IMAGE_ONLY[processor_class]


def image_only_processor(
    path_or_parts, family: Family | str = "qwen2_5_vl", image_processor=None, chat_template: str | None = None
):
    """The family's processor without video processor (images and text only): the same tokenizer,
    image processor, chat template and processor settings (``processor_config.json``: image token
    counts, feature strategy…) as ``AutoProcessor`` reads, so the same outputs for images.

    ``path_or_parts``: a directory (tokenizer + image processor, chat template from the tokenizer
    or ``chat_template.jinja``) or a tokenizer (then pass ``image_processor``)."""
    import inspect

    from transformers import AutoImageProcessor, AutoTokenizer

    from .families import get_family

    fam = get_family(family) if isinstance(family, str) else family
    cls = _image_only_class(fam.processor_class)
    settings: dict[str, Any] = {}
    if isinstance(path_or_parts, (str, os.PathLike)):
        path = Path(path_or_parts)
        tokenizer = AutoTokenizer.from_pretrained(path)
        image_processor = AutoImageProcessor.from_pretrained(path)
        if chat_template is None:
            jinja = path / "chat_template.jinja"
            chat_template = getattr(tokenizer, "chat_template", None) or (
                jinja.read_text() if jinja.exists() else None
            )
        cfg = path / "processor_config.json"
        if cfg.is_file():
            accepted = set(inspect.signature(cls.__init__).parameters) - {
                "self",
                "image_processor",
                "tokenizer",
                "video_processor",
                "chat_template",
                "kwargs",
            }
            settings = {k: v for k, v in json.loads(cfg.read_text()).items() if k in accepted}
    else:
        tokenizer = path_or_parts
    return cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=None,
        chat_template=chat_template,
        **settings,
    )


def image_only_qwen_processor(path_or_parts, image_processor=None, chat_template: str | None = None):
    """A ``Qwen2_5_VLProcessor`` without video processor (see :func:`image_only_processor`)."""
    return image_only_processor(path_or_parts, "qwen2_5_vl", image_processor, chat_template)


def load_vlm(
    name_or_dir: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    revision: str | None = None,
    local_files_only: bool | None = None,
    attn_implementation: str | None = "sdpa",
) -> VLM:
    """Load model + processor and pick the family adapter.

    Args:
        name_or_dir: local ``save_pretrained`` directory or hub id (``llava-hf/llava-1.5-7b-hf``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``…
        dtype: ``"float32"`` (default), ``"bfloat16"``, ``"float16"`` or a ``torch.dtype``.
        revision: hub revision (branch, tag or commit); ignored for local directories.
        local_files_only: hub only; ``None`` follows ``HF_HUB_OFFLINE``.
        attn_implementation: passed to ``from_pretrained`` (``"sdpa"`` by default; methods that
            need attention weights switch to ``"eager"`` for the one forward that needs them).
    """
    from transformers import AutoConfig

    from .adapters import adapter_for

    from .. import errors

    torch_dtype = parse_dtype(dtype)
    path = _resolve_dir(name_or_dir, revision, local_files_only)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as exc:
        raise errors.model_load_failed(path, exc) from exc
    family = family_of_model_type(config.model_type, f"{path}/config.json")
    cls = _model_class(config)
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        from safetensors import SafetensorError
    except ImportError:  # pragma: no cover
        SafetensorError = OSError  # noqa: N806
    try:
        model = cls.from_pretrained(path, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError, EOFError, SafetensorError) as exc:
        if isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower():
            raise
        raise errors.model_load_failed(path, exc) from exc
    dev = torch.device(device)
    model.to(dev).eval()
    try:
        processor = _load_processor(path, family)
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise errors.model_load_failed(path, exc) from exc
    adapter = adapter_for(family.name, model, processor)
    return VLM(
        model=model,
        processor=processor,
        family=family.name,
        adapter=adapter,
        device=dev,
        dtype=torch_dtype,
        source=str(path),
    )


def read_architecture(path: str | os.PathLike) -> str | None:
    """The first ``architectures`` entry of ``path/config.json`` (None when absent)."""
    cfg = json.loads((Path(path) / "config.json").read_text())
    return (cfg.get("architectures") or [None])[0]
