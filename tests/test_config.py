"""params.yaml validation: every mistake stops with one line naming the key."""

from pathlib import Path

import pytest
import yaml

from lfp.core.params_load import load_params
from lfp.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.fixture()
def base_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.mark.parametrize("profile", ["params.yaml", "tests/micro_params.yaml"] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "params").glob("*.yaml")))
def test_shipped_profiles_load(profile):
    params = load_params(ROOT / profile)
    assert params.models and params.tasks


def test_defaults_are_frozen(base_params, tmp_path):
    params = load_params(_write(tmp_path, base_params))
    with pytest.raises(Exception):
        params.seed = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d.update(bogus=1), "unknown key 'bogus'"),
        (lambda d: d["sae"].update(l2=1), "unknown key 'sae.l2'"),
        (lambda d: d["sae"].update(batch_size="32"), "'sae.batch_size' must be an integer"),
        (lambda d: d["sae"].update(batch_size=-4), "'sae.batch_size' must be >= 1"),
        (lambda d: d["finetune"]["vader"].update(learning_rate=0), "'finetune.vader.learning_rate' must be > 0"),
        (lambda d: d["divergence"].update(top_k=99), "'divergence.top_k' (99) exceeds"),
        (lambda d: d.update(tasks=["vader", "sarcasm"]), "'task_specs.sarcasm' is missing"),
            (lambda d: d["task_specs"]["hh"].update(kind="rlhf"), "'task_specs.hh.kind' must be one of"),
            (lambda d: d.update(tasks=[]), "'tasks' must list at least one task"),
        (lambda d: d.update(models=["nope"]), "'model_specs.nope' is missing"),
        (lambda d: d["explain"].update(backend="gpt5"), "'explain.backend' must be one of"),
        (lambda d: d["sae"].update(tied="yes"), "'sae.tied' must be true or false"),
        (lambda d: d.pop("seed"), "missing key 'seed'"),
    ],
)
def test_bad_params_name_the_key(base_params, tmp_path, mutate, needle):
    mutate(base_params)
    path = _write(tmp_path, base_params)
    with pytest.raises(ConfigError) as exc:
        load_params(path)
    msg = str(exc.value)
    assert needle in msg and str(path) in msg and "\n" not in msg


def test_invalid_yaml_names_the_line(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("seed: 0\nmodels: [tiny\n")
    with pytest.raises(ConfigError, match=r"params.yaml:\d+: invalid YAML"):
        load_params(p)


def test_missing_params_file(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")


def test_seed_everything_makes_torch_deterministic_without_importing_the_compiler():
    """seed_everything turns on torch's deterministic algorithms (warn only) without importing
    torch._inductor / torch._dynamo, which cost ~1 s in every stage process."""
    import subprocess
    import sys

    code = ("import sys, torch; from lfp.core.seeding import seed_everything; seed_everything(3); "
            "print(torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(), "
            "'torch._inductor' in sys.modules, 'torch._dynamo' in sys.modules, torch.initial_seed())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "True", "False", "False", "3"]


def test_model_sae_overrides_apply_to_that_model_only(base_params, tmp_path):
    base_params["models"] = ["tiny", "other"]
    base_params["model_specs"]["other"] = {"source": "tiny", "sae_architecture": "topk", "sae_k": 8, "sae_tied": False}
    params = load_params(_write(tmp_path, base_params))
    assert params.sae_for("tiny") == params.sae
    other = params.sae_for("other")
    assert (other.architecture, other.k, other.tied, other.l1) == ("topk", 8, False, params.sae.l1)


def test_preference_measure_tasks_must_be_preference_tasks(base_params, tmp_path):
    base_params["measure"]["preference_tasks"] = ["vader"]
    with pytest.raises(ConfigError, match="measure.preference_tasks"):
        load_params(_write(tmp_path, base_params))


def test_local_llm_profile_is_the_default_plus_its_llm_keys():
    """params/local-llm.yaml must not drift from params.yaml: only its own keys differ
    (regenerate it with the recipe in its header when params.yaml changes)."""
    default = yaml.safe_load((ROOT / "params.yaml").read_text())
    local = yaml.safe_load((ROOT / "params" / "local-llm.yaml").read_text())
    own = {("profile",), ("llm", "server"), ("llm", "timeout_s"), ("explain", "backend"), ("explain", "top_k_features"), ("explain", "simulate")}
    for key in own:
        for d in (default, local):
            node = d
            for part in key[:-1]:
                node = node[part]
            node.pop(key[-1])
    assert default == local
    assert yaml.safe_load((ROOT / "params" / "local-llm.yaml").read_text())["llm"]["server"] == "local"


def _leaf_keys(node: object, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    if isinstance(node, dict):
        return set().union(*(_leaf_keys(v, (*prefix, str(k))) for k, v in node.items())) if node else {prefix}
    return {prefix}


@pytest.mark.parametrize("profile", sorted(p.name for p in (ROOT / "params").glob("*.yaml")))
def test_every_profile_loads(profile: str):
    load_params(ROOT / "params" / profile)


def test_smollm2_profile_sets_every_knob_of_the_default():
    """A real-model profile that silently lacks a knob runs the code's default, not the measurement
    the README describes: every leaf of params.yaml (but the tiny model's own spec) is set there too."""
    default = _leaf_keys(yaml.safe_load((ROOT / "params.yaml").read_text()))
    smollm2 = _leaf_keys(yaml.safe_load((ROOT / "params" / "smollm2.yaml").read_text()))
    assert {k for k in default - smollm2 if k[:2] != ("model_specs", "tiny")} == set()
