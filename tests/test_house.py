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
    "sftlab.manifest": 0, "sftlab.terminal": 0, "sftlab.progress": 0,
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


def _module_level_imports(module: str, modules: set[str]) -> set[str]:
    """The sftlab modules ``module`` imports when it is imported: statements at module level, in
    ``if`` and ``try`` blocks too (not inside functions), a package's parent excluded."""
    tree = ast.parse(Path(importlib.util.find_spec(module).origin).read_text(encoding="utf-8"))
    stack, found = list(tree.body), set()
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.If, ast.Try, ast.ExceptHandler)):
            stack += [*node.body, *getattr(node, "orelse", ()), *getattr(node, "handlers", ()),
                      *getattr(node, "finalbody", ())]
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                      for a in node.names}
    return {m for m in found if m in modules and m != module and not module.startswith(m + ".")}


def test_no_import_loop():
    """No module imports, directly or through others, a module that imports it back: the graph
    of module-level imports, and the CLI's commands, has no cycle (a module is whole when it is used)."""
    modules = set(_modules()) | {"sftlab"}
    graph = {m: _module_level_imports(m, modules) for m in modules}
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
