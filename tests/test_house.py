"""The package's own structure: a public API that holds, stages imported downward only, one owner
per concept, and error messages that lead somewhere."""
from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import sftlab

PACKAGE = Path(sftlab.__file__).parent

# Each stage may import itself and the stages ranked below it, never one above.
STAGE_RANK = {
    "sftlab": 0, "sftlab.errors": 0, "sftlab.fingerprints": 0, "sftlab.collector": 0, "sftlab.files": 0,
    "sftlab.manifest": 0, "sftlab.terminal": 0, "sftlab.progress": 0, "sftlab.yaml_input": 0, "sftlab.run_dir": 0, "sftlab.hub": 0,
    "sftlab.data": 1, "sftlab.tokens": 2, "sftlab.prepare": 3, "sftlab.model": 4, "sftlab.evaluation": 5,
    "sftlab.train": 6, "sftlab.report": 7, "sftlab.demo": 8, "sftlab.commands": 9, "sftlab.cli": 9,
    "sftlab.__main__": 10,
}
CLI_RANK = STAGE_RANK["sftlab.cli"]


def _stage(module: str) -> str:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in STAGE_RANK and (n > 1 or len(parts) == 1):
            return ".".join(parts[:n])
    raise KeyError(module)


def _rank(module: str) -> int:
    return STAGE_RANK[_stage(module)]


def _modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(sftlab.__path__, "sftlab.")
                  if m.name != "sftlab.__main__")  # importing __main__ runs the CLI


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every sftlab module a file imports, at module level or inside functions (not in docstrings)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("sftlab")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sftlab"):
            for a in node.names:
                full = f"{node.module}.{a.name}"
                out.append((node.lineno, full if importlib.util.find_spec(node.module) and _is_module(full)
                            else node.module))
    return out


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def test_every_module_is_in_a_stage():
    unplaced = [m for m in _modules() if not any(m == s or m.startswith(s + ".") for s in STAGE_RANK)]
    assert not unplaced, f"modules outside every stage of the layout: {unplaced}"


def test_no_stage_imports_one_above_it():
    violations = []
    for module in _modules():
        spec = importlib.util.find_spec(module)
        for line, imported in _imports(Path(spec.origin)):
            if imported == "sftlab":
                continue
            if _rank(imported) > _rank(module):
                violations.append(f"{module}:{line} imports {imported} ({_stage(imported)} is above "
                                  f"{_stage(module)})")
    assert not violations, "\n".join(violations)


def _module_level_imports(module: str, modules: set[str], *, lazy: bool = False) -> set[str]:
    """The sftlab modules ``module`` imports when it is imported: statements at module level, in
    ``if`` and ``try`` blocks too (with ``lazy``, inside functions too), a package's parent excluded."""
    tree = ast.parse(Path(importlib.util.find_spec(module).origin).read_text(encoding="utf-8"))
    stack, found = list(ast.walk(tree) if lazy else tree.body), set()
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.If, ast.Try, ast.ExceptHandler)) and not lazy:
            stack += [*node.body, *getattr(node, "orelse", ()), *getattr(node, "handlers", ()),
                      *getattr(node, "finalbody", ())]
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                      for a in node.names}
    return {m for m in found if m in modules and m != module and not module.startswith(m + ".")}


@pytest.mark.parametrize("lazy", [False, True], ids=["module_level", "inside_functions_too"])
def test_no_import_loop(lazy):
    """No module imports, directly or through others, a module that imports it back: the graph
    of module-level imports, and the CLI's commands, has no cycle (a module is whole when it is
    used); nor has the graph with the imports inside functions (a loop is not hidden by laziness)."""
    modules = set(_modules()) | {"sftlab"}
    graph = {m: _module_level_imports(m, modules, lazy=lazy) for m in modules}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (loop := visit(n, [*path, n])):
                return loop
        state[m] = 2
        return None

    loops = [loop for m in sorted(modules) if m not in state and (loop := visit(m, [m]))]
    assert not loops, "import loops: " + "; ".join(" -> ".join(loop) for loop in loops)


def test_the_library_never_imports_the_cli():
    offenders = []
    for module in _modules():
        if _rank(module) >= CLI_RANK:
            continue
        offenders += [f"{module}:{line}" for line, imported in _imports(Path(importlib.util.find_spec(module).origin))
                      if imported.startswith(("sftlab.cli", "sftlab.commands"))]
    assert not offenders


def test_public_names_hold_after_every_submodule_is_imported():
    """``sftlab.encode(...)`` used to work once: importing the submodule ``sftlab.encode`` then
    bound the module over the function. Every public name must stay what it was."""
    names = [n for n in sftlab.__all__ if n != "__version__"]
    first = {n: getattr(sftlab, n) for n in names}
    for module in _modules():
        importlib.import_module(module)
    for n in names:
        again = getattr(sftlab, n)
        assert again is first[n], f"sftlab.{n} changed to {again!r} once every submodule was imported"
        assert not isinstance(again, type(sftlab)), f"sftlab.{n} is a module"
    assert all(not _is_module(f"sftlab.{n}") for n in names), "a public name is also a submodule name"


def test_the_documented_api_works_twice(hand_tok):
    for _ in range(2):
        conv = sftlab.Conversation((sftlab.Message("user", "hi"), sftlab.Message("assistant", "hello")))
        ex = sftlab.encode(conv, hand_tok, sftlab.get_template("chatml", hand_tok))
        rows = sftlab.pack([ex], 64)
        assert isinstance(rows[0], sftlab.PackedRow) and isinstance(ex, sftlab.EncodedExample)
        assert sftlab.detect_refusal("I'm sorry, but I can't help with that.") == "refuse"
        assert sftlab.load_policy is not None and sftlab.Policy is not None
        for module in _modules():
            importlib.import_module(module)


def test_one_config_hash_for_checkpoint_state_and_manifest():
    from sftlab.manifest import config_hash
    from sftlab.train.config import TrainConfig

    cfg = TrainConfig.model_validate({"model": {"path": "m"}, "data": {"train": ["t.jsonl"]}, "out": "r"})
    assert cfg.sha256() == config_hash(cfg.to_dict())


def test_one_owner_per_concept():
    """Concepts with a single owner: the atomic writer, the tokenizer hash, the config hash, the
    collector pause, the additive mask. A second definition anywhere is a second owner."""
    owners = {"def tokenizer_sha256": "fingerprints.py", "def config_hash": "fingerprints.py",
              "def canonical_json(value": "fingerprints.py", "gc.disable()": "collector.py",
              "torch.finfo(dtype).min)": "tokens/packing.py", "class UsageError": "errors.py"}
    for needle, owner in owners.items():
        found = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if needle in p.read_text())
        assert found == [owner], f"{needle!r} defined in {found}, expected only in {owner}"


def test_missing_control_tokens_message_names_a_real_remedy(hand_tok):
    from sftlab.tokens.encoding import encode
    from sftlab.tokens.templates import TemplateError
    from sftlab.train.config import TrainConfig

    conv = sftlab.Conversation((sftlab.Message("user", "hi"), sftlab.Message("assistant", "hello")))
    with pytest.raises(TemplateError) as err:
        encode(conv, hand_tok, "llama3")
    message = str(err.value)
    assert "add_role_tokens(tokenizer, model, template)" in message
    assert "add_role_tokens: true" not in message
    assert "add_role_tokens" not in TrainConfig.model_fields


def test_check_head_message_names_the_config_key_and_null_chunk_size_skips_the_check():
    import torch

    from sftlab.demo.tiny import build_model
    from sftlab.model.objective import check_head

    llama = build_model(vocab_size=64, hidden=32, layers=1)
    llama.config.final_logit_softcapping = 0.5      # the head and the model's logits disagree
    with pytest.raises(ValueError, match=r"loss\.chunk_size: null"):
        check_head(llama)
    loader = (PACKAGE / "model" / "loading.py").read_text()
    assert "if cfg.loss.chunk_size is not None:\n            check_head(model)" in loader
    assert torch.is_tensor(next(llama.parameters()))


# --------------------------------------------------------------------------- owners, by behaviour
# A tiny `sftlab train` + `eval` + `report` runs once with each owner wrapped by a recorder in every
# module that holds it (and in the owner's own module, for imports made inside functions); the
# tests below read what went through the owners and what did not.

_WRITERS = ("write_atomic", "atomic_file", "append_text", "publish_dir")
_ALLOWED_SHA256 = ("sftlab.fingerprints", "sftlab.prepare")  # the prepared store hashes its chunks as it streams them


def _wrap_everywhere(mp, owner, name: str, record) -> None:
    import sys

    real = getattr(owner, name)

    def recorder(*args, **kwargs):
        record(name, args, kwargs)
        return real(*args, **kwargs)

    for module in [m for m in list(sys.modules.values()) if getattr(m, "__name__", "").startswith("sftlab")]:
        if getattr(module, name, None) is real:
            mp.setattr(module, name, recorder)


@pytest.fixture(scope="module")
def owned_run(hostile_assets, tmp_path_factory):
    """``(run, seen)``: a finished train + eval + report under recorders. ``seen["written"]``:
    paths given to sftlab.files' writers (``publish_dir``: the published directory);
    ``seen["run_json_opens"]``: run.json files opened outside ``manifest.read_run_json`` (and the
    owners that hash or flush a file's bytes);
    ``seen["reads"]``: calls of ``read_run_json``; ``seen["sha256_callers"]``: sftlab modules that
    called ``hashlib.sha256``; ``seen["json_sha256"]``: values hashed by ``json_sha256``."""
    import builtins
    import hashlib
    import io
    import json
    import os
    import sys

    import sftlab.cli  # noqa: F401  (every module a command imports at start is loaded before wrapping)
    import sftlab.commands.eval, sftlab.commands.report, sftlab.commands.train  # noqa: E401, F401
    import sftlab.report, sftlab.train.loop, sftlab.evaluation.evaluate  # noqa: E401, F401
    from sftlab import files, fingerprints, manifest
    from sftlab.cli import main

    from conftest import hostile_config

    root = tmp_path_factory.mktemp("owned")
    run = root / "run"
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"What is {i} + 1?", "slice": "math",
                                           "expected": "comply"}) + "\n" for i in range(3)))
    seen = {"written": [], "run_json_opens": [], "reads": 0, "sha256_callers": set(), "json_sha256": []}
    # run.json's bytes may also be opened to hash them (a checkpoint's checksums) or to flush them
    # (publish_dir): no reading of the manifest, so those owners' frames are exempt too
    exempt = {manifest.read_run_json.__code__, fingerprints.file_sha256.__code__, files.normal_modes.__code__}

    def inside_reader() -> bool:
        frame = sys._getframe(2)
        while frame is not None:
            if frame.f_code in exempt:
                return True
            frame = frame.f_back
        return False

    def wrote(name, args, kwargs):
        seen["written"].append((name, os.path.abspath(args[1] if name == "publish_dir" else args[0])))

    def opened(real):
        def recorder(path, *args, **kwargs):
            if isinstance(path, (str, os.PathLike)) and os.path.basename(os.fspath(path)) == "run.json" \
                    and not inside_reader():
                seen["run_json_opens"].append(os.fspath(path))
            return real(path, *args, **kwargs)
        return recorder

    real_sha256 = hashlib.sha256

    def sha256(*args, **kwargs):
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller.startswith("sftlab"):
            seen["sha256_callers"].add(caller)
        return real_sha256(*args, **kwargs)

    def counted(name, args, kwargs):
        if name == "read_run_json":
            seen["reads"] += 1
        else:
            seen["json_sha256"].append(args[0])

    with pytest.MonkeyPatch.context() as mp:
        for name in _WRITERS:
            _wrap_everywhere(mp, files, name, wrote)
        _wrap_everywhere(mp, manifest, "read_run_json", counted)
        _wrap_everywhere(mp, fingerprints, "json_sha256", counted)
        for owner, name in ((builtins, "open"), (io, "open"), (os, "open")):
            mp.setattr(owner, name, opened(getattr(owner, name)))
        mp.setattr(hashlib, "sha256", sha256)
        assert main(["train", str(hostile_config(hostile_assets, run))]) == 0
        assert main(["eval", "--model", str(run / "final"), "--prompts", str(prompts), "--out", str(run / "eval"),
                     "--conditions", "training_template", "--max-new-tokens", "4"]) in (0, 1)
        assert main(["report", str(run)]) == 0
    return run, seen


def test_every_file_of_a_run_is_written_through_sftlab_files(owned_run):
    """train, eval and report write every file of the run directory with write_atomic /
    atomic_file, append_text (metrics.jsonl) or inside a directory publish_dir published."""
    import os

    run, seen = owned_run
    files = {os.path.abspath(p) for _, p in seen["written"]}
    dirs = {p for name, p in seen["written"] if name == "publish_dir"}
    on_disk = [str(p) for p in run.rglob("*") if p.is_file()]
    assert len(on_disk) > 20 and {"write_atomic", "append_text", "publish_dir"} <= {n for n, _ in seen["written"]}
    stray = [p for p in on_disk if p not in files and not any(p.startswith(d + os.sep) for d in dirs)]
    assert stray == []


def test_run_json_is_read_only_by_the_manifest_module(owned_run):
    """Train (start, checkpoints, end), eval (recording into the run) and report read run.json, and
    every one of those reads went through manifest.read_run_json."""
    run, seen = owned_run
    assert seen["reads"] >= 4
    assert seen["run_json_opens"] == []


def test_every_sha256_is_taken_by_fingerprints(owned_run):
    """No sftlab module but the fingerprints owner (and the prepared store, a stage of its own)
    computes a sha256 during a whole run; the generation cache's keys are json_sha256 values."""
    import json

    from sftlab.files import cache_dir
    from sftlab.fingerprints import json_sha256

    _, seen = owned_run
    assert seen["sha256_callers"] and all(c.startswith(_ALLOWED_SHA256) for c in seen["sha256_callers"]), \
        seen["sha256_callers"]
    keys = {json_sha256(v) for v in seen["json_sha256"] if isinstance(v, dict) and "prompts" in v}
    cached = {p.stem for p in (cache_dir("generations")).rglob("*.json")}
    assert keys and keys <= cached
    assert all(isinstance(json.loads(p.read_text())["responses"], list)
               for p in cache_dir("generations").rglob("*.json") if p.stem in keys)


def test_the_data_version_in_run_json_is_the_stores_records_hash(owned_run):
    """run.json's data version (``data.splits.train.records_sha256``, what ``manifest --diff``
    compares) is the prepared store's ``records_sha256`` as its store.json records it."""
    import json
    from pathlib import Path

    from sftlab.manifest import read_manifest

    run, _ = owned_run
    m = read_manifest(run)
    store = json.loads((Path(m.data.store["train"]["path"]) / "store.json").read_text())
    assert m.schema_version == 2
    assert m.data.splits["train"].records_sha256 == store["records_sha256"]
    assert len(store["records_sha256"]) == 64 and "sha256" not in m.to_dict()["data"]["splits"]["train"]


# Size: a module is one concept a reader can hold; a long function says why it is long.
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 600, 80


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_over_the_line_limit():
    long = [f"{p.relative_to(PACKAGE.parent)}: {n} lines" for p in _sources()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES]
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_long_function_without_its_reason():
    long = []
    for p in _sources():
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES and "long because" not in (ast.get_docstring(node) or "").lower():
                    long.append(f"{p.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines without 'long because ...' in the docstring: {long}"


def _says_why(lines: list[str], i: int) -> bool:
    """A comment on import line ``i`` (0-based), or on the line above the run of imports it ends."""
    if "#" in lines[i]:
        return True
    while i > 0 and lines[i - 1].strip().startswith(("from ", "import ", ")")) or \
            i > 0 and lines[i - 1].startswith(" ") and lines[i - 1].rstrip().endswith(","):
        i -= 1
        if "#" in lines[i]:
            return True
    return i > 0 and lines[i - 1].strip().startswith("#")


def test_every_import_inside_a_function_says_why():
    """An import is at module level unless it is kept lazy for a reason (start-up time, an optional
    dependency, a loop it would make): that reason is a comment on the import or the line above."""
    silent = []
    for p in _sources():
        text = p.read_text(encoding="utf-8")
        lines = text.splitlines()
        for fn in ast.walk(ast.parse(text)):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and not _says_why(lines, node.lineno - 1):
                    silent.append(f"{p.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not silent, f"imports inside functions with no comment saying why they are not at module level: {silent}"
