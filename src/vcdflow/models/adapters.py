"""One adapter per model family: turn decoding branches into model inputs and run the forwards.

The decoding engine (:mod:`vcdflow.decoding.engine`) never touches a family's specifics; it asks
the adapter to

* ``encode(branch, rng)``: chat template (``processor.apply_chat_template`` with an image part when
  the branch has an image and an optional system message) + processor → token ids, pixel values
  and family extras; a branch's ``pixel_fn`` (VCD noise, Self-Aug augmentations…) is applied to
  the *normalised* image tensor ``[N, 3, H, W]`` here, exactly once, in branch order;
* ``prefill_embeds(ids, rows)``: token embeddings with the image features scattered into the image
  placeholder tokens (optionally scaled per image token, for AvisC's masked contrast input);
* ``prefill_positions`` / ``step_positions``: position ids under left padding (1-D rope: cumulative
  sum of the attention mask; Qwen2.5-VL: the model's own 3-D ``get_rope_index``);
* ``forward(embeds, mask, positions, cache)``: one forward of the decoder, last-position logits.

One adapter class per image-token layout (:data:`LAYOUT_ADAPTERS`); each family of
:mod:`vcdflow.models.families` gets its layout's class with its own ``family`` name and record
(``spec``) — :data:`ADAPTERS`, built from the records, not kept by hand.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import torch


@dataclass
class Encoded:
    """One branch, ready for the model: ``input_ids`` [L]; ``pixel_values`` in the processor's
    layout (None for text-only branches); ``extras`` (``image_grid_thw``, ``qformer_input_ids``…);
    ``image_token_scale`` [n_image_tokens] multiplies the image features (AvisC) or None."""

    input_ids: torch.Tensor
    pixel_values: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    image_token_scale: torch.Tensor | None = None
    text: str = ""

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[0])


def _as_list(x) -> list[int]:
    if x is None:
        return []
    if isinstance(x, (list, tuple)):
        return [int(v) for v in x]
    return [int(x)]


def _digest(t: torch.Tensor | None):
    """(dtype, shape, BLAKE2b of the bytes) of a tensor; None for None."""
    if t is None:
        return None
    import hashlib

    x = t.detach().cpu().contiguous()
    raw = x.reshape(-1)
    if raw.dtype == torch.bfloat16:  # numpy has no bfloat16
        raw = raw.view(torch.int16)
    h = hashlib.blake2b(raw.numpy().tobytes(), digest_size=16).hexdigest()
    return (str(t.dtype), tuple(t.shape), h)


_RESERVED_LAYER: list = []


def _reserved_layer_type():
    """:class:`ReservedLayer` (built lazily: transformers is imported on first use); None when
    this transformers has no ``DynamicLayer``."""
    if _RESERVED_LAYER:
        return _RESERVED_LAYER[0]
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:  # pragma: no cover - older transformers
        _RESERVED_LAYER.append(None)
        return None

    class ReservedLayer(DynamicLayer):
        """A ``DynamicLayer`` whose keys/values live in a buffer with ``reserve`` free slots after
        the prefill: a decoding step writes its token in place instead of ``torch.cat`` copying
        the whole cache (on a CPU most of a step's time with ~600-token rows). ``keys``/``values``
        are views of the filled part, so every reader (attention, ``get_seq_length``,
        ``batch_select_indices``) sees what a ``DynamicLayer`` holds; a full buffer grows by
        ``reserve`` again."""

        def __init__(self, reserve: int):
            super().__init__()
            self.reserve = int(reserve)
            self._kbuf = self._vbuf = None

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n_old = self.get_seq_length()
            n = n_old + key_states.shape[-2]
            kb, vb = self._kbuf, self._vbuf
            # a new buffer when there is none, it is full, or ``keys`` was replaced from outside
            if (
                kb is None
                or kb.shape[0] != key_states.shape[0]
                or n > kb.shape[-2]
                or (n_old and self.keys.data_ptr() != kb.data_ptr())
            ):
                shape = list(key_states.shape)
                shape[-2] = n + self.reserve
                kb = key_states.new_empty(shape)
                vb = value_states.new_empty(shape[:-1] + [value_states.shape[-1]])
                if n_old:
                    kb[..., :n_old, :] = self.keys
                    vb[..., :n_old, :] = self.values
                self._kbuf, self._vbuf = kb, vb
            kb[..., n_old:n, :] = key_states
            vb[..., n_old:n, :] = value_states
            self.keys, self.values = kb[..., :n, :], vb[..., :n, :]
            return self.keys, self.values

        def batch_select_indices(self, indices):
            if self.get_seq_length() > 0:
                n = self.keys.shape[-2]
                self._kbuf, self._vbuf = self._kbuf[indices, ...], self._vbuf[indices, ...]
                self.keys, self.values = self._kbuf[..., :n, :], self._vbuf[..., :n, :]

        def cut_left(self, first: int) -> None:
            """Drop the first ``first`` positions (padding no remaining row needs)."""
            if self.get_seq_length() > 0:
                n = self.keys.shape[-2]
                self._kbuf, self._vbuf = self._kbuf[..., first:, :], self._vbuf[..., first:, :]
                self.keys, self.values = self._kbuf[..., : n - first, :], self._vbuf[..., : n - first, :]

    _RESERVED_LAYER.append(ReservedLayer)
    return ReservedLayer


def branch_images(branch) -> list | None:
    """A branch's images as a list (``Branch.image`` may be a list of images), None for none."""
    image = getattr(branch, "image", None)
    if image is None:
        return None
    if isinstance(image, (list, tuple)):
        if any(im is None for im in image):
            raise ValueError("Branch.image: a list of images must not contain None")
        return list(image) or None
    return [image]


def _features(result) -> list[torch.Tensor]:
    """Image features from ``get_image_features`` across transformers versions → list of [T, D]."""
    feats = getattr(result, "pooler_output", result)
    if isinstance(feats, torch.Tensor):
        if feats.ndim == 2:
            return [feats]
        return list(feats)
    return list(feats)


class FamilyAdapter:
    """Base adapter (LLaVA-style decoder-only model with image placeholder tokens)."""

    family = "base"

    @property
    def spec(self):
        """The family's record (:class:`vcdflow.models.families.Family`); None for the base."""
        from .families import FAMILIES

        return FAMILIES.get(self.family)

    @property
    def layout(self) -> str | None:
        """How images become decoder tokens (``grid``, ``query``, ``packed``, ``anyres``)."""
        spec = self.spec
        return None if spec is None else spec.layout

    def __init__(self, model, processor):
        self.model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        cfg = model.config
        self.config = cfg
        self.text_config = cfg.get_text_config(decoder=True) if hasattr(cfg, "get_text_config") else cfg
        self.image_token_id = self._image_token_id()
        ip = getattr(processor, "image_processor", None)
        mean = getattr(ip, "image_mean", None) or [0.5, 0.5, 0.5]
        std = getattr(ip, "image_std", None) or [0.5, 0.5, 0.5]
        self.image_mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.image_std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.pad_token_id = self.tokenizer.pad_token_id
        if self.pad_token_id is None:
            self.pad_token_id = _as_list(self.tokenizer.eos_token_id or 0)[0]
        self._cache_kw = (
            "cache"
            if "cache" in inspect.signature(self._forward_module().forward).parameters
            else "past_key_values"
        )

    # --- facts --------------------------------------------------------------------------------
    def _image_token_id(self) -> int | None:
        for attr in ("image_token_id", "image_token_index"):
            v = getattr(self.config, attr, None)
            if v is not None:
                return int(v)
        v = getattr(self.processor, "image_token_id", None)
        return None if v is None else int(v)

    @property
    def mixed_attention(self) -> bool:
        """True when the decoder has layers of another attention type than full (Gemma 3's
        sliding-window layers): each type builds its own mask from the 2-D one."""
        types = getattr(self.text_config, "layer_types", None) or ()
        return any(t != "full_attention" for t in types)

    @property
    def max_positions(self) -> int | None:
        return getattr(self.text_config, "max_position_embeddings", None)

    @property
    def eos_token_ids(self) -> list[int]:
        gc = getattr(self.model, "generation_config", None)
        ids = _as_list(getattr(gc, "eos_token_id", None)) if gc is not None else []
        return ids or _as_list(self.tokenizer.eos_token_id)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def unk_token(self) -> str:
        return self.tokenizer.unk_token or "<unk>"

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    # --- text ---------------------------------------------------------------------------------
    def messages(self, prompt: str, has_image: bool | int, system: str | None) -> list[dict]:
        """``has_image``: False/True, or the number of images (one image part each, in order)."""
        msgs: list[dict] = []
        if system:
            msgs.append({"role": "system", "content": [{"type": "text", "text": system}]})
        content: list[dict] = [{"type": "image"} for _ in range(int(has_image))]
        content.append({"type": "text", "text": prompt})
        msgs.append({"role": "user", "content": content})
        return msgs

    #: a protocol's chat template: a template shipped in ``vcdflow/protocols/templates/``
    #: (``"llava_v1"``, ``"halc_llava"``, ``"instructblip_raw"``, ``"qwen2_5_vl"``) or Jinja source;
    #: None or ``"model"``: the processor's own. Set per instance (``adapter.chat_template = …``).
    chat_template: str | None = None

    def build_text(self, prompt: str, has_image: bool, system: str | None = None) -> str:
        """The full model input text (chat template applied, image placeholder unexpanded):
        ``self.chat_template`` when set, else the processor's own template, else the fallback."""
        if self.chat_template and self.chat_template != "model":
            from ..protocols.chat import render

            return render(
                self.chat_template,
                self.messages(prompt, has_image, system),
                image_token=str(getattr(self.processor, "image_token", None) or "<image>"),
            )
        if getattr(self.processor, "chat_template", None):
            return self.processor.apply_chat_template(
                self.messages(prompt, has_image, system), add_generation_prompt=True, tokenize=False
            )
        return self.fallback_text(prompt, has_image, system)

    def fallback_text(self, prompt: str, has_image: bool, system: str | None) -> str:
        img = getattr(self.processor, "image_token", "<image>")
        user = f"{img}\n" * int(has_image) + prompt
        return (f"{system} " if system else "") + f"USER: {user} ASSISTANT:"

    # --- encoding -----------------------------------------------------------------------------
    def encode(self, branch, rng: torch.Generator | None = None) -> Encoded:
        """Branch (``prompt``, ``image``, ``system``, ``pixel_fn``, ``image_token_scale``) → Encoded.

        A multi-image branch: ``branch.image`` may be a list of images — one prompt with one image part per image,
        in order, through the family's own chat template and processor (LLaVA: one ``<image>``
        placeholder each; Qwen2.5-VL: one vision block each); ``pixel_fn`` then sees all of them
        ``[N, 3, H, W]`` and ``image_token_scale`` covers all their tokens."""
        images = branch_images(branch)
        image = None if images is None else images[0]
        # one image: has_image=True, exactly as before multi-image branches; a list: the number of images
        has: bool | int = (
            False if images is None else len(images) if isinstance(branch.image, (list, tuple)) else True
        )
        text = self.build_text(branch.prompt, has, getattr(branch, "system", None))
        kwargs: dict[str, Any] = {"text": [text], "return_tensors": "pt"}
        if image is not None:
            kwargs["images"] = list(images)
        out = self.processor(**kwargs)
        ids = out["input_ids"][0].long()
        pv = out.get("pixel_values") if image is not None else None
        extras = {
            k: v
            for k, v in out.items()
            if k not in ("input_ids", "attention_mask", "pixel_values") and isinstance(v, torch.Tensor)
        }
        fn: Callable | None = getattr(branch, "pixel_fn", None)
        if fn is not None:
            if pv is None:
                raise ValueError("branch has a pixel_fn but no image")
            imgs = self.pixels_to_images(pv.float(), extras)
            imgs = fn(imgs, self.image_mean, self.image_std)
            pv = self.images_to_pixels(imgs, extras).to(pv.dtype)
        scale = getattr(branch, "image_token_scale", None)
        if scale is not None:
            n_img = int((ids == self.image_token_id).sum())
            if scale.numel() != n_img:
                raise ValueError(f"image_token_scale has {scale.numel()} entries for {n_img} image tokens")
        return Encoded(input_ids=ids, pixel_values=pv, extras=extras, image_token_scale=scale, text=text)

    def pixels_to_images(self, pixel_values: torch.Tensor, extras: dict) -> torch.Tensor:
        """Processor pixel layout → normalised images [N, 3, H, W]."""
        return pixel_values

    def images_to_pixels(self, images: torch.Tensor, extras: dict) -> torch.Tensor:
        return images

    def image_positions(self, enc: Encoded) -> torch.Tensor:
        """Indices (into ``enc.input_ids``) of the image placeholder tokens."""
        return (enc.input_ids == self.image_token_id).nonzero().flatten()

    # --- batching -----------------------------------------------------------------------------
    def collate(self, rows: list[Encoded]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-pad → (input_ids [R, L], attention_mask [R, L]) on the model device."""
        L = max(r.length for r in rows)
        ids = torch.full((len(rows), L), int(self.pad_token_id), dtype=torch.long)
        mask = torch.zeros((len(rows), L), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, L - r.length :] = r.input_ids
            mask[i, L - r.length :] = 1
        return ids.to(self.device), mask.to(self.device)

    # --- shared prefixes (several rows with the same system text + image) --------------------
    def prefix_length(self, enc: Encoded) -> int:
        """Length of ``enc``'s shareable prefix: up to and including its last image token (capped
        so that at least one token is left for the suffix); a text-only row: its first token (so
        it never widens the prefix batch). 0 when nothing can be split off (a one-token row)."""
        n = enc.length
        img = (enc.input_ids == self.image_token_id).nonzero() if self.image_token_id is not None else None
        if enc.pixel_values is not None and img is not None and img.numel():
            return min(int(img[-1]) + 1, n - 1)
        return min(1, n - 1)

    def prefix_key(self, enc: Encoded, p: int) -> tuple:
        """Identity of ``enc``'s first ``p`` tokens as the model sees them: the exact token ids,
        a digest of the pixel tensor (after ``pixel_fn``), of every family extra (Qwen2.5-VL's
        ``image_grid_thw``, InstructBLIP's Q-Former instruction) and of ``image_token_scale``.
        Rows with equal keys have equal prefix KV states."""
        extras = self._prefix_extras(enc, p)
        return (
            tuple(enc.input_ids[:p].tolist()),
            _digest(enc.pixel_values),
            tuple((k, _digest(v)) for k, v in sorted(extras.items())),
            _digest(enc.image_token_scale),
        )

    #: extras laid out per input token ([1, L]): cut to the prefix with the ids
    TOKEN_EXTRAS = ("mm_token_type_ids", "token_type_ids")

    def _prefix_extras(self, enc: Encoded, p: int) -> dict:
        return {
            k: (v[..., :p] if k in self.TOKEN_EXTRAS and v.shape[-1] == enc.length else v)
            for k, v in enc.extras.items()
        }

    def truncate(self, enc: Encoded, p: int) -> Encoded:
        """``enc``'s first ``p`` tokens with all its image inputs (the prefix row to prefill)."""
        return Encoded(
            input_ids=enc.input_ids[:p],
            pixel_values=enc.pixel_values,
            extras=self._prefix_extras(enc, p),
            image_token_scale=enc.image_token_scale,
            text=enc.text,
        )

    def image_features(self, rows: list[Encoded]) -> list[torch.Tensor]:
        """Per image row, its image features [T, D] (in row order)."""
        px = [r.pixel_values for r in rows if r.pixel_values is not None]
        if not px:
            return []
        res = self.model.get_image_features(pixel_values=torch.cat(px).to(self.device, self.dtype))
        return _features(res)

    def prefill_embeds(self, ids: torch.Tensor, rows: list[Encoded]) -> torch.Tensor:
        embeds = self.model.get_input_embeddings()(ids)
        feats = self.image_features(rows)
        if not feats:
            return embeds
        img_rows = [r for r in rows if r.pixel_values is not None]
        feats = self._per_row(img_rows, feats)
        parts = []
        for r, f in zip(img_rows, feats):
            if r.image_token_scale is not None:
                f = f * r.image_token_scale.to(f.device, f.dtype).unsqueeze(-1)
            parts.append(f)
        feats_all = torch.cat(parts).to(embeds.device, embeds.dtype)
        mask = ids == self.image_token_id
        spec = self.spec
        if spec is not None and spec.bidirectional_image:
            # Gemma 3: the next forward (this prefill) lets an image's tokens see each other
            self._image_token_types = mask.long()
        # rows without an image must not contain placeholders (checked at encode time)
        if int(mask.sum()) != feats_all.shape[0]:
            raise ValueError(f"{int(mask.sum())} image tokens but {feats_all.shape[0]} image features")
        return embeds.masked_scatter(mask.unsqueeze(-1), feats_all)

    def n_images(self, enc: Encoded) -> int:
        """Images in ``enc`` (a multi-image branch has several; the processor's leading dim)."""
        return 0 if enc.pixel_values is None else int(enc.pixel_values.shape[0])

    def _per_row(self, img_rows: list[Encoded], feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-image features → per-row features (a row's images concatenated in order)."""
        if len(feats) == len(img_rows):
            return feats
        counts = [self.n_images(r) for r in img_rows]
        if sum(counts) != len(feats):
            raise ValueError(
                f"{len(feats)} image feature blocks for {sum(counts)} images in {len(img_rows)} rows"
            )
        out, k = [], 0
        for c in counts:
            out.append(torch.cat([f.reshape(-1, f.shape[-1]) for f in feats[k : k + c]]))
            k += c
        return out

    def prefill_positions(self, ids: torch.Tensor, mask: torch.Tensor, rows: list[Encoded]):
        """(position_ids for the prefill, next position per row [R])."""
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        return pos, mask.sum(-1)

    def step_positions(self, next_pos: torch.Tensor) -> torch.Tensor:
        return next_pos.unsqueeze(-1)

    # --- forward ------------------------------------------------------------------------------
    def _forward_module(self):
        return self.model

    def new_cache(self, reserve: int = 0):
        """A ``DynamicCache``; with ``reserve`` > 0 its plain layers keep room for ``reserve``
        more tokens after the prefill (:class:`ReservedLayer`: no full-cache copy per step)."""
        from transformers import DynamicCache

        try:
            cache = DynamicCache(config=self.model.config)
        except TypeError:  # older transformers
            cache = DynamicCache()
        if reserve > 0:
            layer_type = _reserved_layer_type()
            if layer_type is not None:
                layers = getattr(cache, "layers", None) or []
                for k, layer in enumerate(layers):
                    if type(layer) is layer_type.__base__ and not layer.is_initialized:
                        layers[k] = layer_type(reserve)
                if getattr(cache, "layer_class_to_replicate", None) is layer_type.__base__:
                    cache.layer_class_to_replicate = lambda: layer_type(reserve)
        return cache

    def forward(
        self,
        embeds: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache,
        output_attentions: bool = False,
    ):
        """One decoder forward → (last-position logits [R, V] float32, attentions or None)."""
        mod = self._forward_module()
        kwargs = {self._cache_kw: cache, "use_cache": cache is not None}
        types = getattr(self, "_image_token_types", None)
        if types is not None:
            # a bidirectional-image family's prefill (the chunk with the image, from the row's
            # start): token_type_ids mark the image tokens, as transformers' generate passes them
            self._image_token_types = None
            fresh = cache is None or cache.get_seq_length() == 0  # the chunk starts at the rows' start
            if fresh and types.shape == embeds.shape[:2] and bool(types.any()):
                kwargs["token_type_ids"] = types.to(embeds.device)
        if output_attentions:
            kwargs["output_attentions"] = True
        out = mod(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions, logits_to_keep=1, **kwargs
        )
        return out.logits[:, -1, :].float(), (out.attentions if output_attentions else None)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(ids)

    # --- handles for engine capabilities (hooks on layers, early-exit logits) ------------------
    def text_model(self):
        """The language model's decoder stack: ``.layers`` (decoder layers, ``layer_idx`` order)
        and ``.norm`` (the final norm N_f) — ``LlamaModel``/``Qwen2_5_VLTextModel`` for every family."""
        lm = self._forward_module()
        inner = getattr(lm, "model", lm)
        return getattr(inner, "language_model", inner)

    def decoder_layers(self) -> list:
        return list(self.text_model().layers)

    def final_norm(self):
        return self.text_model().norm

    def lm_head(self):
        """W_lm (the output embedding) of the language model."""
        return self._forward_module().get_output_embeddings()


class LlavaAdapter(FamilyAdapter):
    """LLaVA-1.5 (``llava-hf``) and the demo LLaVA: CLIP vision tower, one image → a fixed number of
    placeholder tokens (576 for 336 px / patch 14), template ``USER: <image>\\n{text} ASSISTANT:``."""

    family = "llava"


class InstructBlipAdapter(FamilyAdapter):
    """InstructBLIP: the Q-Former reads the instruction too (``qformer_input_ids``); its 32 query
    outputs are projected into the ``num_query_tokens`` image placeholders the processor inserts.
    No chat template: the text is the prompt itself (a system text is prepended to it and so
    reaches both the LLM and the Q-Former). ``Branch.qformer_prompt`` gives the Q-Former its own
    instruction with the LLM text unchanged — ICD's official InstructBLIP runs (``icd`` with
    ``position="qformer"`` / ``"qformer_question"``)."""

    family = "instructblip"

    def build_text(self, prompt: str, has_image: bool, system: str | None = None) -> str:
        if (self.chat_template and self.chat_template != "model") or getattr(
            self.processor, "chat_template", None
        ):
            return super().build_text(prompt, has_image, system)
        return f"{system} {prompt}" if system else prompt

    def encode(self, branch, rng=None) -> Encoded:
        images = branch_images(branch)
        if images is not None and len(images) > 1:
            from ..decoding.types import InputError

            raise InputError(
                f"the instructblip family takes one image per prompt (one Q-Former query set): "
                f"a branch with {len(images)} images (multi-image) is not supported"
            )
        if images is not None and isinstance(branch.image, (list, tuple)):
            from dataclasses import replace

            branch = replace(branch, image=images[0])
        if getattr(branch, "image", None) is None:
            # InstructBLIP's processor always wants an image for the Q-Former; a text-only branch
            # is the LLM on the text alone.
            text = self.build_text(branch.prompt, False, getattr(branch, "system", None))
            ids = self.tokenizer(text, return_tensors="pt")["input_ids"][0].long()
            return Encoded(input_ids=ids, text=text)
        enc = super().encode(branch, rng)
        qprompt = getattr(branch, "qformer_prompt", None)
        if qprompt is not None:
            # ICD: the Q-Former reads a different instruction than the LLM (official
            # ``preprompt_cd`` → ``text_Qformer_cd`` in blip2_vicuna_instruct.py)
            q = self.processor.qformer_tokenizer(qprompt, return_tensors="pt")
            enc.extras["qformer_input_ids"] = q["input_ids"].long()
            enc.extras["qformer_attention_mask"] = q["attention_mask"].long()
        return enc

    def _forward_module(self):
        return self.model.language_model

    def image_features(self, rows: list[Encoded]) -> list[torch.Tensor]:
        img_rows = [r for r in rows if r.pixel_values is not None]
        if not img_rows:
            return []
        from torch.nn.utils.rnn import pad_sequence

        q_ids = pad_sequence(
            [r.extras["qformer_input_ids"][0] for r in img_rows], batch_first=True, padding_value=0
        )
        q_mask = pad_sequence(
            [r.extras["qformer_attention_mask"][0] for r in img_rows], batch_first=True, padding_value=0
        )
        res = self.model.get_image_features(
            pixel_values=torch.cat([r.pixel_values for r in img_rows]).to(self.device, self.dtype),
            qformer_input_ids=q_ids.to(self.device),
            qformer_attention_mask=q_mask.to(self.device),
        )
        if isinstance(res, tuple):
            res = res[0]
        return _features(res)


class PackedPatchAdapter(FamilyAdapter):
    """Qwen2-VL / Qwen2.5-VL: dynamic resolution (14 px patches, 2×2 merge), pixels as flattened
    patches, 3-D multimodal rope positions from the model's ``get_rope_index``; text tokens after
    the image continue from ``max(position) + 1``."""

    family = "qwen2_5_vl"

    def _ip(self):
        return self.processor.image_processor

    def _geometry(self):
        ip = self._ip()
        return (
            int(getattr(ip, "patch_size", 14)),
            int(getattr(ip, "temporal_patch_size", 2)),
            int(getattr(ip, "merge_size", 2)),
        )

    def pixels_to_images(self, pixel_values: torch.Tensor, extras: dict) -> torch.Tensor:
        p, tp, m = self._geometry()
        imgs = []
        start = 0
        for t, h, w in extras["image_grid_thw"].tolist():
            n = t * h * w
            x = pixel_values[start : start + n]
            start += n
            c = x.shape[1] // (tp * p * p)
            x = x.reshape(t, h // m, w // m, m, m, c, tp, p, p)
            x = x.permute(0, 6, 5, 1, 3, 7, 2, 4, 8)  # t, tp, c, h/m, m, p, w/m, m, p
            x = x.reshape(t * tp, c, h * p, w * p)
            imgs.append(x[:1])  # a still image is its frame repeated tp times
        return torch.cat(imgs)

    def images_to_pixels(self, images: torch.Tensor, extras: dict) -> torch.Tensor:
        p, tp, m = self._geometry()
        out = []
        for i, (t, h, w) in enumerate(extras["image_grid_thw"].tolist()):
            x = images[i : i + 1].repeat(t * tp, 1, 1, 1)
            c = x.shape[1]
            x = x.reshape(t, tp, c, h // m, m, p, w // m, m, p)
            x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
            out.append(x.reshape(t * h * w, c * tp * p * p))
        return torch.cat(out)

    def n_images(self, enc: Encoded) -> int:
        return 0 if enc.pixel_values is None else int(enc.extras["image_grid_thw"].shape[0])

    def image_features(self, rows: list[Encoded]) -> list[torch.Tensor]:
        img_rows = [r for r in rows if r.pixel_values is not None]
        if not img_rows:
            return []
        px = torch.cat([r.pixel_values for r in img_rows]).to(self.device, self.dtype)
        thw = torch.cat([r.extras["image_grid_thw"] for r in img_rows]).to(self.device)
        return _features(self.model.get_image_features(pixel_values=px, image_grid_thw=thw))

    def prefill_positions(self, ids: torch.Tensor, mask: torch.Tensor, rows: list[Encoded]):
        inner = self.model.model
        thw = [r.extras["image_grid_thw"] for r in rows if r.pixel_values is not None]
        grid = torch.cat(thw).to(ids.device) if thw else None
        params = inspect.signature(inner.get_rope_index).parameters
        kwargs: dict[str, Any] = {"image_grid_thw": grid, "attention_mask": mask}
        if "mm_token_type_ids" in params:
            tt = torch.zeros_like(ids, dtype=torch.int)
            tt[ids == self.image_token_id] = 1
            kwargs["mm_token_type_ids"] = tt
        if "video_grid_thw" in params:
            kwargs["video_grid_thw"] = None
        pos, _ = inner.get_rope_index(ids, **kwargs)
        pos = pos.to(ids.device)
        masked = pos.masked_fill(mask.unsqueeze(0) == 0, -1)
        next_pos = masked.amax(dim=(0, 2)) + 1
        pos = pos.masked_fill(mask.unsqueeze(0) == 0, 1)
        return pos, next_pos

    def step_positions(self, next_pos: torch.Tensor) -> torch.Tensor:
        return next_pos.view(1, -1, 1).expand(3, -1, 1)


Qwen25VLAdapter = PackedPatchAdapter  # the name before Qwen2-VL shared it


class AnyResAdapter(FamilyAdapter):
    """LLaVA-NeXT / LLaVA-OneVision: any-resolution tiling. The processor resizes an image to its
    best-fitting grid pinpoint and cuts it into tiles of the vision tower's size, plus one base
    tile of the whole image: ``pixel_values`` [images, tiles, 3, H, W] (tiles padded to the most
    tiles among the images of one processor call) and ``image_sizes`` [images, 2]. The model's
    ``get_image_features`` unpads the tile features to the image's aspect ratio and appends a
    learned newline embedding after each feature row (OneVision: pooled to at most 9 tiles'
    worth, ``anyres_max_9``), so the number of image tokens depends on the image size; the
    processor writes exactly that many placeholders. Positions are 1-D (cumulative mask).

    ``pixel_fn`` sees every tile as one image [images × tiles, 3, H, W] (the base tile and the
    grid tiles alike): pixel-wise distortions (VCD's noise) act as on the whole picture, geometric
    ones (a flip, a crop) act per tile — a divergence from flipping the picture before tiling."""

    def pixels_to_images(self, pixel_values: torch.Tensor, extras: dict) -> torch.Tensor:
        return pixel_values.reshape(-1, *pixel_values.shape[-3:])

    def images_to_pixels(self, images: torch.Tensor, extras: dict) -> torch.Tensor:
        n = int(extras["image_sizes"].shape[0])
        return images.reshape(n, -1, *images.shape[-3:])

    def image_features(self, rows: list[Encoded]) -> list[torch.Tensor]:
        img_rows = [r for r in rows if r.pixel_values is not None]
        if not img_rows:
            return []
        tiles = max(int(r.pixel_values.shape[1]) for r in img_rows)
        px = torch.cat(
            [
                torch.nn.functional.pad(
                    r.pixel_values, (0, 0, 0, 0, 0, 0, 0, tiles - r.pixel_values.shape[1])
                )
                for r in img_rows
            ]
        ).to(self.device, self.dtype)
        kwargs: dict[str, Any] = {
            "image_sizes": torch.cat([r.extras["image_sizes"] for r in img_rows]).to(self.device)
        }
        if "batch_num_images" in inspect.signature(self.model.get_image_features).parameters:
            # OneVision tiles an image only when it is its prompt's only image (the processor counts so)
            kwargs["batch_num_images"] = torch.tensor([self.n_images(r) for r in img_rows])
        return _features(self.model.get_image_features(pixel_values=px, **kwargs))


#: image-token layout (:data:`vcdflow.models.families.LAYOUTS`) → adapter class; a layout with no
#: class here (cross-attention) has no adapter yet
LAYOUT_ADAPTERS: dict[str, type[FamilyAdapter]] = {
    "grid": LlavaAdapter,
    "query": InstructBlipAdapter,
    "packed": PackedPatchAdapter,
    "anyres": AnyResAdapter,
    "tiles": LlavaAdapter,  # InternVL: every tile is one "image" of the grid adapter
}


def _family_adapters() -> dict[str, type[FamilyAdapter]]:
    from .families import FAMILIES

    out: dict[str, type[FamilyAdapter]] = {}
    for name, spec in FAMILIES.items():
        base = LAYOUT_ADAPTERS.get(spec.layout)
        if base is None:
            continue
        out[name] = (
            base
            if base.family == name
            else type(
                f"{spec.title.split()[0].replace('-', '').replace('.', '')}Adapter",
                (base,),
                {"family": name, "__doc__": f"{spec.title}: {base.__doc__}"},
            )
        )
    return out


#: family name → adapter class (the family's layout class, carrying the family's name and record)
ADAPTERS: dict[str, type[FamilyAdapter]] = _family_adapters()


def adapter_for(family: str, model, processor) -> FamilyAdapter:
    if family not in ADAPTERS:
        raise ValueError(f"no adapter for family {family!r}; supported: {', '.join(ADAPTERS)}")
    return ADAPTERS[family](model, processor)
