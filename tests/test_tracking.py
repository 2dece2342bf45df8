"""MLflow tracking: one run per stage instance, same numbers as the DVC metrics file, no secrets."""

import json
from pathlib import Path

import mlflow
import pytest
import yaml

from lfp.core.errors import BackendError
from lfp.core.tracking import stage_run
from lfp.core.tracking_params import flatten, is_secret_name, numeric_metrics


def _runs(uri: str, experiment: str = "lfp-test"):
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(experiment)
    return mlflow.search_runs([exp.experiment_id], output_format="list")


def test_stage_run_logs_tags_params_and_the_same_metrics(mlflow_store, tmp_path):
    metrics_path = tmp_path / "m.json"
    with stage_run("probe", experiment="lfp-test", model="tiny", task="vader",
                   params={"probe": {"alpha": 1.0}, "llm": {"api_key": "sk-SECRET", "api_key_env": "OPENAI_API_KEY"}},
                   tags={"explainer": "offline"}) as run:
        run.write_metrics(metrics_path, {"kendall_tau": 0.25, "n_words": 12, "note": "text", "beats_base": True})
    runs = {r.info.run_name: r for r in _runs(mlflow_store)}
    r = runs["probe@tiny-vader"]
    (parent,) = [x for name, x in runs.items() if name.startswith("pipeline@")]
    assert r.data.tags["pipeline_run_id"] == parent.info.run_id
    assert r.data.tags["pipeline"] == parent.data.tags["pipeline"]
    assert r.data.tags["model"] == "tiny" and r.data.tags["task"] == "vader" and r.data.tags["stage"] == "probe"
    assert r.data.tags["explainer"] == "offline" and "git_commit" in r.data.tags
    assert r.data.params["probe.alpha"] == "1.0"
    assert "llm.api_key" not in r.data.params and r.data.params["llm.api_key_env"] == "OPENAI_API_KEY"
    on_disk = json.loads(metrics_path.read_text())
    own = {k: v for k, v in r.data.metrics.items() if not k.startswith("shared.")}  # + shared aliases (params.yaml: vader)
    assert own == numeric_metrics(on_disk) == {"kendall_tau": 0.25, "n_words": 12.0, "beats_base": 1.0}
    assert r.info.status == "FINISHED"


def test_failed_stage_marks_run_failed(mlflow_store):
    with pytest.raises(RuntimeError):
        with stage_run("sae", experiment="lfp-test", model="tiny", task="hh"):
            raise RuntimeError("boom")
    (r,) = [x for x in _runs(mlflow_store) if x.info.run_name == "sae@tiny-hh"]
    assert r.info.status == "FAILED"


def test_stage_runs_of_one_execution_share_one_parent(mlflow_store):
    for task in ("vader", "hh"):
        with stage_run("probe", experiment="lfp-test", model="tiny", task=task):
            pass
    runs = _runs(mlflow_store)
    parents = [r for r in runs if r.data.tags.get("kind") == "pipeline"]
    children = [r for r in runs if r.data.tags.get("kind") == "stage"]
    assert len(parents) == 1 and len(children) == 2
    assert {c.data.tags["pipeline_run_id"] for c in children} == {parents[0].info.run_id}


def test_unreachable_server_fails_fast_naming_the_uri(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with pytest.raises(BackendError, match=r"MLflow at http://127.0.0.1:9"):
        with stage_run("sae", experiment="lfp-test"):
            pass


# --------------------------------------------------------------------------------------------
# params: complete, and never a secret
# --------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def _by_name(uri: str, experiment: str = "lfp-test") -> dict:
    return {r.info.run_name: r for r in _runs(uri, experiment)}


def test_param_names_with_token_counts_are_logged_and_secret_names_are_not(mlflow_store):
    """`token` in a name is not a secret (max_new_tokens was dropped); what a name says is."""
    params = {
        "finetune": {"vader": {"max_new_tokens": 19, "min_new_tokens": 8}},
        "probe": {"generation_max_new_tokens": 19},
        "explain": {"context_tokens": 24},
        "tiny_base": {"tokenizer_texts": 2000},
        "llm": {"api_key_env": "OPENAI_API_KEY", "api_key": "x1", "hf_token": "x2", "password": "x3",
                "client_secret": "x4", "authorization": "x5", "token": "x6", "apiKey": "x7"},
    }
    with stage_run("probe", experiment="lfp-test", model="tiny", task="vader", params=params):
        pass
    logged = _by_name(mlflow_store)["probe@tiny-vader"].data.params
    for key in ("finetune.vader.max_new_tokens", "finetune.vader.min_new_tokens", "probe.generation_max_new_tokens",
                "explain.context_tokens", "tiny_base.tokenizer_texts", "llm.api_key_env"):
        assert key in logged, key
    assert not [k for k in logged if k.startswith("llm.") and k != "llm.api_key_env"]


@pytest.mark.parametrize("name", ["llm.api_key", "hf_token", "access_token", "db.password", "secret", "Authorization",
                                  "aws.secret_access_key", "auth", "x.apiKey", "bearer_token", "private_key"])
def test_is_secret_name_yes(name):
    assert is_secret_name(name)


@pytest.mark.parametrize("name", ["finetune.vader.max_new_tokens", "explain.context_tokens", "tiny_base.tokenizer_texts",
                                  "llm.api_key_env", "sort_key", "keyword", "author", "monkey"])
def test_is_secret_name_no(name):
    assert not is_secret_name(name)


def test_every_leaf_of_the_repository_params_reaches_mlflow(mlflow_store, tmp_path, monkeypatch):
    """Design: the parent run `pipeline@<id>` holds every leaf of the params file (flattened with
    dots, values as `str(value)`); each stage run holds the sections its stage passed. Here the
    repository's own params.yaml is the params file."""
    import shutil

    shutil.copy2(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LFP_PARAMS", raising=False)
    leaves = flatten(yaml.safe_load((tmp_path / "params.yaml").read_text()))
    assert len(leaves) > 50
    with stage_run("probe", experiment="lfp-test", model="tiny", task="vader", params={"probe": {"ridge_alpha": 1.0}}):
        pass
    runs = _by_name(mlflow_store)
    (parent,) = [r for name, r in runs.items() if name.startswith("pipeline@")]
    logged = parent.data.params
    missing = {k: str(v) for k, v in leaves.items() if logged.get(k) != str(v)}
    assert missing == {}
    assert runs["probe@tiny-vader"].data.params == {"probe.ridge_alpha": "1.0"}


SECRET_A, SECRET_B, SECRET_C, SECRET_D, SECRET_E = (f"sk-SECRET-{c}-0123456789" for c in "ABCDE")


def test_secrets_never_reach_mlflow_by_name_value_or_url(mlflow_store, tmp_path, monkeypatch):
    """Secret by name (`llm.api_key`), by value (the value of the variable `llm.api_key_env` names,
    or of OPENAI_API_KEY), inside a URL's query (`?api-key=`), in a tag (explain's `llm_base_url`):
    not in params, tags, nor anywhere in the store's bytes."""
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["llm"].update(base_url=f"https://llm.example.com/v1?api-key={SECRET_A}&api-version=2024", api_key=SECRET_B,
                       api_key_env="LFP_TEST_KEY_VAR", model=SECRET_C)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LFP_PARAMS", raising=False)
    monkeypatch.setenv("LFP_TEST_KEY_VAR", SECRET_C)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET_D)
    with stage_run("explain", experiment="lfp-test", model="tiny", task="vader",
                   params={"llm": data["llm"], "note": SECRET_D, "endpoint": f"see https://h/v1?token={SECRET_E}"},
                   tags={"llm_base_url": f"https://h/v1?token={SECRET_E}"}) as run:
        run.log_metrics({"n": 1})
    runs = _by_name(mlflow_store)
    stage = runs["explain@tiny-vader"]
    (parent,) = [r for name, r in runs.items() if name.startswith("pipeline@")]
    assert stage.data.tags["llm_base_url"] == "https://h/v1?token=***"
    for run in (stage, parent):
        assert run.data.params["llm.base_url"] == "https://llm.example.com/v1?api-key=***&api-version=2024"
        assert run.data.params["llm.api_key_env"] == "LFP_TEST_KEY_VAR"
        assert "llm.api_key" not in run.data.params and "llm.model" not in run.data.params
    assert "note" not in stage.data.params and stage.data.params["endpoint"] == "see https://h/v1?token=***"
    secrets = [s.encode() for s in (SECRET_A, SECRET_B, SECRET_C, SECRET_D, SECRET_E)]
    hits = [str(p) for p in tmp_path.rglob("*") if p.is_file() and p.name != "params.yaml"
            and any(s in p.read_bytes() for s in secrets)]
    assert hits == []


def test_a_long_list_param_is_cut_with_a_pointer_to_its_full_value(mlflow_store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow's own clients read the store's relative artifact paths from its folder
    words = [f"word{i}" for i in range(2000)]  # ~20,000 characters: over MLflow's 6000
    with stage_run("contrastive", experiment="lfp-test", task="vader", params={"neutral_words": words}) as run:
        run_id = run.run_id
    value = _by_name(mlflow_store)["contrastive@vader"].data.params["neutral_words"]
    assert len(value) <= 6000 and value.startswith("['word0', 'word1'")
    assert value.endswith(f"[{len(str(words))} chars; full value in artifact params/params.json]")
    full = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="params/params.json",
                                                                dst_path=str(tmp_path / "dl"))).read_text())
    assert full == {"neutral_words": str(words)}


def test_mlflow_errors_redact_the_tracking_uri(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://user:{SECRET_A}@127.0.0.1:9/?token={SECRET_B}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with pytest.raises(BackendError, match=r"MLflow at http://\*\*\*@127.0.0.1:9/\?token=\*\*\*") as info:
        with stage_run("sae", experiment="lfp-test"):
            pass
    assert SECRET_A not in str(info.value) and SECRET_B not in str(info.value)


# --------------------------------------------------------------------------------------------
# comparing one stage across models x tasks (the recipe in docs/reliability.md)
# --------------------------------------------------------------------------------------------


def test_one_stage_across_models_and_tasks_is_one_flat_search(mlflow_store):
    """`mlflow.search_runs(filter_string="tags.stage = 'probe'")` lists every probe run, one row each,
    with the same model / task / source columns for every stage (the pipeline parents are not in it)."""
    for model, task in (("tiny", "vader"), ("tiny", "hh"), ("smollm2", "vader")):
        with stage_run("probe", experiment="lfp-test", model=model, task=task) as run:
            run.log_metrics({"kendall_tau": 0.5 if task == "vader" else 0.1})
    with stage_run("sae", experiment="lfp-test", model="tiny", task="vader", source="base"):
        pass
    with stage_run("prepare", experiment="lfp-test", task="vader"):
        pass
    mlflow.set_tracking_uri(mlflow_store)
    df = mlflow.search_runs(experiment_names=["lfp-test"], filter_string="tags.stage = 'probe'", order_by=["tags.model", "tags.task"])
    got = sorted(zip(df["tags.model"], df["tags.task"], df["tags.source"], df["metrics.kendall_tau"]))
    assert got == [("smollm2", "vader", "", 0.5), ("tiny", "hh", "", 0.1), ("tiny", "vader", "", 0.5)]
    assert set(df["tags.kind"]) == {"stage"} and df["tags.pipeline_run_id"].notna().all()
    assert "tags.mlflow.parentRunId" not in df  # flat: the UI folds child runs under a parent
    sae = mlflow.search_runs(experiment_names=["lfp-test"], filter_string="tags.stage = 'sae' and tags.source = 'base'")
    assert list(sae["tags.mlflow.runName"]) == ["sae@tiny-vader-base"]


# --------------------------------------------------------------------------------------------
# the UI's view: names, parents, experiment kind, shared metric names, relative artifact paths
# --------------------------------------------------------------------------------------------


def test_a_run_is_named_as_its_dvc_stage(mlflow_store):
    """`lfp measure` runs as the DVC stage `measure_pairs` for preference tasks: the name says so."""
    with stage_run("measure", experiment="lfp-test", model="tiny", task="hh", dvc_stage="measure_pairs"):
        pass
    r = _by_name(mlflow_store)["measure_pairs@tiny-hh"]
    assert r.data.tags["stage"] == "measure" and r.data.tags["dvc_stage"] == "measure_pairs@tiny-hh"


def test_parent_fails_with_a_child_and_recovers_when_it_reruns(mlflow_store):
    with stage_run("prepare", experiment="lfp-test", task="vader"):
        pass
    with pytest.raises(RuntimeError):
        with stage_run("probe", experiment="lfp-test", model="tiny", task="vader"):
            raise RuntimeError("boom")
    parent = _by_name(mlflow_store)
    (p,) = [r for n, r in parent.items() if n.startswith("pipeline@")]
    assert p.info.status == "FAILED"
    with stage_run("probe", experiment="lfp-test", model="tiny", task="vader"):
        pass
    assert mlflow.get_run(p.info.run_id).info.status == "FINISHED"


def test_experiment_opens_as_a_classic_ml_experiment(mlflow_store):
    with stage_run("prepare", experiment="lfp-test", task="vader"):
        pass
    mlflow.set_tracking_uri(mlflow_store)
    assert mlflow.get_experiment_by_name("lfp-test").tags["mlflow.experimentKind"] == "custom_model_development"


def test_shared_aliases_are_logged_beside_the_task_kinds_keys(mlflow_store, tmp_path):
    for task, kind, metrics in (("vader", "lexicon_rl", {"kendall_tau": 0.3, "kendall_tau_ci_low": 0.2}),
                                ("hh", "preference_dpo", {"probe_accuracy": 0.8, "probe_accuracy_ci_low": 0.7})):
        with stage_run("probe", experiment="lfp-test", model="tiny", task=task, tags={"task_kind": kind}) as run:
            run.write_metrics(tmp_path / f"{task}.json", metrics)
        assert json.loads((tmp_path / f"{task}.json").read_text()) == metrics  # the DVC file keeps its keys
    runs = _by_name(mlflow_store)
    vader, hh = runs["probe@tiny-vader"], runs["probe@tiny-hh"]
    assert vader.data.metrics["shared.probe_score"] == 0.3 and hh.data.metrics["shared.probe_score"] == 0.8
    assert {k for k in vader.data.metrics if k.startswith("shared.")} == {k for k in hh.data.metrics if k.startswith("shared.")}
    assert "probe_score=kendall_tau" in vader.data.tags["shared_from"]


ALIAS_STAGES = {"finetune": "finetune.json", "probe": "probe.json", "measure": "lfp.json"}


@pytest.mark.parametrize("stage", sorted(ALIAS_STAGES))
def test_committed_metrics_share_their_alias_names_across_tasks(stage):
    """The committed metrics of vader (lexicon) and hh / toxic (preference): every shared role is
    found in every task, so a cross-task compare of `shared.*` has no empty cell."""
    from lfp.core.shared_metrics import SHARED_METRICS, shared_metrics

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    keys = {}
    for task in params["tasks"]:
        kind = params["task_specs"][task]["kind"]
        path = ROOT / "reports" / "runs" / f"{params['models'][0]}-{task}" / ALIAS_STAGES[stage]
        keys[task] = set(shared_metrics(stage, kind, json.loads(path.read_text())))
    roles = {"shared." + r for kind_roles in (SHARED_METRICS[(stage, k)] for k in ("lexicon_rl", "preference_dpo")) for r in kind_roles}
    assert all(k == roles for k in keys.values()), keys


def test_alias_roles_are_the_same_for_both_task_kinds():
    from lfp.core.shared_metrics import SHARED_METRICS

    for stage in {s for s, _ in SHARED_METRICS}:
        assert set(SHARED_METRICS[(stage, "lexicon_rl")]) == set(SHARED_METRICS[(stage, "preference_dpo")]), stage


def test_artifact_paths_are_stored_relative_to_the_store(tmp_path, monkeypatch):
    """A store made before paths were relative (absolute `file://.../mlartifacts`) is rewritten in
    place; artifacts land beside mlflow.db whatever the working directory."""
    from lfp.core.tracking_store import resolve_location

    proj = tmp_path / "proj"
    proj.mkdir()
    uri = f"sqlite:///{proj / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("DVC_ROOT", str(proj))
    mlflow.set_tracking_uri(uri)
    old = mlflow.MlflowClient().create_experiment("lfp-test", artifact_location=(proj / "mlartifacts").as_uri())
    legacy = mlflow.MlflowClient().create_run(old, run_name="old").info.artifact_uri
    assert legacy.startswith("file://")
    (tmp_path / "note.txt").write_text("x")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with stage_run("report", experiment="lfp-test") as run:
        run.log_artifact(tmp_path / "note.txt")
    exp = mlflow.get_experiment_by_name("lfp-test")
    assert exp.artifact_location == "mlartifacts"
    runs = {r.info.run_name: r for r in mlflow.search_runs([exp.experiment_id], output_format="list")}
    assert runs["old"].info.artifact_uri == "mlartifacts/" + legacy.split("/mlartifacts/", 1)[1]
    stored = runs["report"].info.artifact_uri
    assert stored.startswith("mlartifacts/") and (proj / stored / "note.txt").is_file()
    assert resolve_location(stored, uri) == str(proj / stored)
    assert not (elsewhere / "mlartifacts").exists()


def test_a_workspace_experiment_that_cannot_reach_mlflow_says_how_to_restore_params(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    monkeypatch.setenv("DVC_EXP_NAME", "sweep-1")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BackendError) as info:
        with stage_run("sae", experiment="lfp-test"):
            pass
    assert "touch params.yaml && git checkout -- params.yaml && dvc checkout" in str(info.value)
    assert "\n" not in str(info.value)


def test_a_stage_without_a_task_kind_tag_gets_its_aliases_from_the_params_file(mlflow_store, tmp_path, monkeypatch):
    """finetune opens its run without lfp.core.stage_context (no `task_kind` tag): the params file says the kind."""
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"task_specs": {"hh": {"kind": "preference_dpo"}}}))
    monkeypatch.setenv("LFP_PARAMS", str(params))
    with stage_run("finetune", experiment="lfp-test", model="tiny", task="hh") as run:
        run.write_metrics(tmp_path / "f.json", {"eval_pairs": 512, "train_pairs": 2000})
    r = _by_name(mlflow_store)["finetune@tiny-hh"]
    assert r.data.tags["task_kind"] == "preference_dpo"
    assert r.data.metrics["shared.eval_n"] == 512 and r.data.metrics["shared.train_n"] == 2000
