"""Paper protocols as data: ``PROTOCOLS[name]`` → a frozen :class:`Protocol` (one file per paper).

A protocol fixes everything *around* a method that decides a result: the conversation template
and system text per model family, the benchmark prompt templates and suffixes, the answer parser,
the decoding mode and warpers (temperature, top-p, top-k — including library defaults an official
script silently inherited), per-family method hyper-parameters, ``max_new_tokens``, image
preprocessing, seeds and subsets. Every value carries its source (``repo/path:line``).

Two kinds of run:

* ``protocol: unified`` (the default): one shared setting for every method — the fair comparison;
* ``protocol: paper``: each method under its own paper's protocol (:data:`PAPER_OF`) — the
  reproduction. A named protocol (``vcd``, ``icd``, …) can also be chosen per method.

CONTRACT (used by the workflow, the runner and the CLI; keep these names):

* ``PROTOCOLS: dict[str, Protocol]``; ``get_protocol(name) -> Protocol`` (``ValueError`` naming
  the unknown name and listing the valid ones);
* ``PAPER_OF: dict[str, str]`` engine method name → its paper's protocol name;
  ``protocol_for(method, choice) -> str`` resolves ``"paper"`` / ``"unified"`` / a name;
* ``Protocol.resolve(method=, family=, benchmark=, mode=) -> Resolved`` where ``benchmark`` is
  the benchmark *kind* (``pope``, ``chair``, ``mme``, ``amber``) and ``mode`` is ``greedy`` or
  ``sample`` (``None``: the protocol's own mode for that method);
* ``Resolved`` (frozen): ``protocol, system, chat_template, prompt, parser, do_sample,
  temperature, top_p, top_k, params, max_new_tokens, image_preprocess, seeds, sources``
  (``prompt`` holds ``{question}``; ``params`` are method-parameter overrides on top of the
  method's defaults; ``chat_template`` names a template shipped in
  ``vcdflow/protocols/templates/`` or ``"model"`` for the model's own; ``image_preprocess`` is
  ``"processor"`` or ``"pad_square_mean"``; ``sources`` maps each field name to its citation);
* ``Resolved.as_dict()`` → a JSON-able dict (goes into the run record and the result hash);
* ``diff(a, b) -> list[dict]`` per (family, benchmark, field) how protocol ``a`` differs from
  ``b`` (the report lists paper protocols against ``unified``);
* ``preprocess_image(image, how, mean) -> PIL.Image``.
"""
