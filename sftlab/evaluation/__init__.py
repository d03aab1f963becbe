"""Evaluation: did the tuning do what the policy asked?

Modules, in the order ``sftlab eval`` uses them:

- ``prompts``: prompt sets (JSONL, CSV with a column mapping, XSTest) -> ``EvalPrompt``
- ``robustness``: the conditions (templates and system prompts) and the spread across them
- ``generation``: batched, left-padded generation with recorded ``DecoderSettings``
- ``cache``: responses cached by (model, prompt ids, settings, condition)
- ``detector`` / ``classifier``: refusal detection (rules by default, or a classifier model)
- ``answers``: checkable answers (exact, numeric, regex) for task accuracy
- ``metrics``: rates per slice with Wilson 95 % intervals
- ``loss``: held-out response-only eval loss
- ``gates``: the policy's gates and the reference-vs-tuned comparison
- ``evaluate``: the whole run (``run_evaluation``, ``write_outputs``) and ``generation_eval``,
  the hook the training loop calls every N steps
- ``agreement``: a detector's agreement with labelled responses (``sftlab eval-detector``)
"""
