"""Pushing to the Hub and loading back, against the strict local Hub in `hub_server.py`.

The push tests run in both client modes of huggingface_hub 2.x: the legacy LFS protocol (`HF_HUB_DISABLE_XET=1`,
the server answers "lfs" for weights) and the default client with hf_xet installed (the server answers "regular"
for every file, since the client sends every "lfs" file through Xet, which this server does not speak). The
client is pointed at the server with `endpoint=` for pushes; loading through transformers goes through
`constants.ENDPOINT` / `HUGGINGFACE_CO_URL_TEMPLATE` (monkeypatched here; `HF_ENDPOINT` in a subprocess), because
huggingface_hub reads `HF_ENDPOINT` once, at import.
"""

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from huggingface_hub import HfApi, ModelCard, constants
from huggingface_hub.errors import RepositoryNotFoundError
from huggingface_hub.utils import get_session
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoProcessor, CLIPModel, Trainer, TrainingArguments, pipeline

import modeling_vlp  # noqa: F401  (registers the Auto classes)
from modeling_vlp import VLPDualEncoderModel, get_preset_config
from modeling_vlp import hub
from modeling_vlp.commands.push import push_command
from modeling_vlp.conversion import convert_clip
from modeling_vlp.processors import VLPImageProcessor, VLPProcessor, VLPTokenizer

from hub_server import DEFAULT_TOKEN, DEFAULT_USER, LocalHub
from vlp_testing import tiny_clip_config


pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    # huggingface_hub's own LFS upload passes a file as `data=` to httpx2.
    pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning"),
]

CAPTIONS = [f"a {c} {s}" for c in ("red", "green", "blue", "black") for s in ("circle", "square", "star")]
TEXTS = ["a red circle", "a blue star", "green"]
EVAL_RESULTS = {
    "i2t_r@1": 41.5, "t2i_r@1": 38.25, "rsum": 250.0, "i2t_mean_rank": 3.5, "num_images": 200.0,
    "chance_i2t_r@1": 0.5, "global_step": 3.0,
}  # fmt: skip
MODES = {"lfs": True, "xet-default": False}  # client mode -> HF_HUB_DISABLE_XET


# --------------------------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def hub_environment(tmp_path_factory):
    """Online (for these tests only), with a fresh cache and no token but the ones the tests pass."""
    home = tmp_path_factory.mktemp("hf_home")
    with pytest.MonkeyPatch.context() as patch:
        for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_OIDC_RESOURCE"):
            patch.delenv(name, raising=False)
        patch.setattr(constants, "HF_HUB_OFFLINE", False)
        patch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
        patch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
        patch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
        # The client's agent telemetry would fetch its registry from huggingface.co: an empty one is cached.
        (home / "agent_harnesses.json").write_text(json.dumps({"standardEnvVars": [], "harnesses": {}}))
        patch.setattr(constants, "AGENT_HARNESSES_PATH", str(home / "agent_harnesses.json"))
        yield home


@pytest.fixture(params=list(MODES))
def client_mode(request, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", MODES[request.param])
    return request.param


@pytest.fixture
def local_hub(client_mode):
    """The server, answering "lfs" to the legacy client and "regular" to the default (Xet) client."""
    with LocalHub(upload_mode="lfs" if client_mode == "lfs" else "regular") as server:
        yield server
        assert server.unhandled == [] and server.xet_requests == []


@pytest.fixture
def legacy_hub(monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    with LocalHub() as server:
        yield server


def read_from(server: LocalHub, monkeypatch) -> None:
    """Make transformers' downloads (hf_hub_download without an endpoint argument) read from `server`."""
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    template = server.url + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    # transformers keeps one HfApi, bound to the endpoint of its first use (another test's server, maybe).
    import transformers.utils.hub

    monkeypatch.setattr(transformers.utils.hub, "_hf_api", None)


def build_processor() -> VLPProcessor:
    tokenizer = VLPTokenizer.train_from_iterator(CAPTIONS, vocab_size=60, model_type="bpe", model_max_length=16)
    image_processor = VLPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return VLPProcessor(image_processor=image_processor, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def saved_dual(tmp_path_factory):
    """A saved dual-tiny model + processor, with the inputs its processor made and the logits it gave."""
    folder = tmp_path_factory.mktemp("dual")
    processor = build_processor()
    tokenizer = processor.tokenizer
    torch.manual_seed(0)
    text_config = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    model = VLPDualEncoderModel(get_preset_config("dual-tiny", text_config=text_config)).eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40 + 8 * i, 36, 3), dtype=np.uint8)) for i in range(len(TEXTS))]
    inputs = processor(images=images, text=TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits_per_image.contiguous()
    return dict(folder=folder, images=images, inputs=inputs, logits=logits, processor=processor)


def copy_folder(saved_dual, tmp_path):
    """A copy of the saved folder: a push writes README.md into the folder it pushes."""
    return shutil.copytree(saved_dual["folder"], tmp_path / "model")


def local_files(folder) -> set[str]:
    return {os.path.relpath(os.path.join(root, name), folder) for root, _, names in os.walk(folder) for name in names}


def card_metadata(server: LocalHub, repo_id: str) -> tuple[dict, str]:
    card = ModelCard(server.file(repo_id, "README.md").decode())
    return card.data.to_dict(), card.text


# --------------------------------------------------------------------------------------------------------------
# Pushing a saved folder
# --------------------------------------------------------------------------------------------------------------


def test_push_folder_stores_every_file_and_the_card(saved_dual, tmp_path, local_hub, client_mode):
    folder = copy_folder(saved_dual, tmp_path)
    card = hub.build_model_card(
        folder, kind="trained", repo_id="tester/dual-tiny", objectives=["itc"], eval_results=EVAL_RESULTS,
        training=dict(steps=3, batch_size=8, dataset="scenes", dataset_description="generated shapes"),
    )  # fmt: skip
    info = hub.push_folder(
        folder, "dual-tiny", endpoint=local_hub.url, token=DEFAULT_TOKEN, commit_message="Add dual-tiny",
        model_card=card,
    )  # fmt: skip
    repo_id = f"{DEFAULT_USER}/dual-tiny"
    initial, pushed = local_hub.commits(repo_id)
    assert info.oid == pushed.oid and pushed.message == "Add dual-tiny" and pushed.parent == initial.oid
    assert set(pushed.files) == local_files(folder) | {".gitattributes"}
    assert set(pushed.added) == local_files(folder)
    for name in local_files(folder):
        assert pushed.files[name].data == (folder / name).read_bytes(), name
    batch_requests = [r for r in local_hub.requests if r.path.endswith(".git/info/lfs/objects/batch")]
    if client_mode == "lfs":  # weights and the SentencePiece model through the LFS batch API, the rest inline
        assert pushed.lfs_paths == {"model.safetensors", "spiece.model"} and batch_requests
    else:
        assert pushed.lfs_paths == set() and not batch_requests

    metadata, text = card_metadata(local_hub, repo_id)
    assert metadata["library_name"] == "transformers" and metadata["license"] == "apache-2.0"
    assert metadata["pipeline_tag"] == "zero-shot-image-classification"
    assert {"modeling_vlp", "vlp_dual_encoder", "itc"} <= set(metadata["tags"])
    assert "base_model" not in metadata
    results = metadata["model-index"][0]["results"]
    measured = {m["type"]: m["value"] for r in results for m in r["metrics"]}
    assert measured == {k: v for k, v in EVAL_RESULTS.items() if k in ("i2t_r@1", "t2i_r@1", "rsum", "i2t_mean_rank")}
    assert {r["dataset"]["name"] for r in results} == {"scenes"}
    assert "Optimizer steps: 3" in text and "Batch size (all devices): 8" in text and "trust_remote_code=True" in text
    info = HfApi(endpoint=local_hub.url).model_info(repo_id)
    assert info.sha == pushed.oid and info.card_data.library_name == "transformers"


# --------------------------------------------------------------------------------------------------------------
# Loading back, every family
# --------------------------------------------------------------------------------------------------------------

# family -> (preset, Auto class of the saved pretraining model, output compared)
FAMILIES = {
    "dual": ("dual-tiny", "AutoModel", "logits_per_image"),
    "unified": ("unified-tiny", "AutoModelForPreTraining", "itm_logits"),
    "fusion": ("fusion-tiny", "AutoModelForPreTraining", "itm_logits"),
}


@pytest.fixture(scope="module")
def saved_families(saved_dual, tmp_path_factory):
    """Pretraining checkpoints of the unified and fusion families (same processor), beside the dual encoder."""
    import transformers

    saved = {"dual": {**saved_dual, "output": saved_dual["logits"]}}
    processor = AutoProcessor.from_pretrained(saved_dual["folder"])
    tokenizer = processor.tokenizer
    vocab = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    for family in ("unified", "fusion"):
        preset, auto_class, output = FAMILIES[family]
        overrides = vocab if family == "unified" else dict(text_config=vocab)
        torch.manual_seed(0)
        model = getattr(transformers, auto_class).from_config(get_preset_config(preset, **overrides)).eval()
        folder = tmp_path_factory.mktemp(family)
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        with torch.no_grad():
            expected = getattr(model(**saved_dual["inputs"]), output).contiguous()
        saved[family] = dict(folder=folder, inputs=saved_dual["inputs"], images=saved_dual["images"], output=expected)
    return saved


@pytest.fixture(scope="module")
def family_hub(saved_families, tmp_path_factory):
    """A legacy-LFS server holding tester/<family>-tiny for every family, each pushed with a generated card."""
    with pytest.MonkeyPatch.context() as patch, LocalHub() as server:
        patch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        for family, saved in saved_families.items():
            folder = shutil.copytree(saved["folder"], tmp_path_factory.mktemp("push") / family)
            card = hub.build_model_card(folder, kind=None, repo_id=f"tester/{family}-tiny")
            hub.push_folder(folder, f"tester/{family}-tiny", endpoint=server.url, token=DEFAULT_TOKEN, model_card=card)
        yield server


@pytest.mark.parametrize("family", list(FAMILIES))
def test_pushed_repos_load_back_after_import(family, saved_families, family_hub, monkeypatch):
    import transformers

    preset, auto_class, output = FAMILIES[family]
    saved, repo_id = saved_families[family], f"tester/{family}-tiny"
    metadata, text = card_metadata(family_hub, repo_id)
    assert f"{auto_class}.from_pretrained" in text  # the card shows the class that loads it, and it does:
    read_from(family_hub, monkeypatch)
    model = getattr(transformers, auto_class).from_pretrained(repo_id).eval()
    assert type(model).__module__.startswith("modeling_vlp.")
    processor = AutoProcessor.from_pretrained(repo_id)
    processed = processor(images=saved["images"], text=TEXTS, padding=True, return_tensors="pt")
    for key, value in saved["inputs"].items():
        assert torch.equal(processed[key], value), key
    with torch.no_grad():
        assert torch.equal(getattr(model(**processed), output), saved["output"])
    if family == "dual":
        assert metadata["pipeline_tag"] == "zero-shot-image-classification"
        classifier = pipeline("zero-shot-image-classification", model=repo_id)
        scores = classifier(saved["images"][0], candidate_labels=TEXTS, hypothesis_template="{}")
        expected = {t: round(float(p), 5) for t, p in zip(TEXTS, saved["output"][0].softmax(-1))}
        assert {s["label"]: round(s["score"], 5) for s in scores} == expected
    else:
        assert metadata["pipeline_tag"] == "feature-extraction"
    assert family_hub.unhandled == [] and family_hub.xet_requests == []


REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys; sys.modules["modeling_vlp"] = None  # as on a machine without the package
    import json, torch, transformers
    from PIL import Image
    from safetensors.torch import load_file, save_file
    from transformers import AutoProcessor, pipeline

    work, families, texts = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
    image = Image.open(f"{work}/image.png")
    inputs = load_file(f"{work}/inputs.safetensors")
    outputs, classes = {}, []
    for family, (repo_id, auto_class, output) in families.items():
        model = getattr(transformers, auto_class).from_pretrained(repo_id, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained(repo_id, trust_remote_code=True)
        with torch.no_grad():
            outputs[family] = getattr(model(**inputs), output).contiguous()
        outputs[f"{family}_input_ids"] = processor(images=[image], text=texts, padding=True, return_tensors="pt")[
            "input_ids"
        ].contiguous()
        classes += [type(model), type(processor), type(processor.tokenizer)]
    classifier = pipeline("zero-shot-image-classification", model=families["dual"][0], trust_remote_code=True)
    json.dump(classifier(image, candidate_labels=texts, hypothesis_template="{}"), open(f"{work}/zero_shot.json", "w"))
    save_file(outputs, f"{work}/outputs.safetensors")
    classes.append(type(classifier.model))
    json.dump([f"{c.__module__}.{c.__name__}" for c in classes], open(f"{work}/classes.json", "w"))
    """
)


@pytest.mark.slow  # runs a subprocess
def test_pushed_repos_load_back_without_the_package(saved_families, family_hub, tmp_path):
    """A Python where modeling_vlp cannot be imported, HF_ENDPOINT pointing at the server: each repo's own code
    runs, and gives the saved model's outputs."""
    saved = saved_families["dual"]
    work = tmp_path / "work"
    work.mkdir()
    save_file({k: v.contiguous() for k, v in saved["inputs"].items()}, work / "inputs.safetensors")
    saved["images"][0].save(work / "image.png")
    families = {family: (f"tester/{family}-tiny", auto, output) for family, (_, auto, output) in FAMILIES.items()}
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "PYTHONPATH"))}
    env.update(
        HF_ENDPOINT=family_hub.url, HF_HOME=str(tmp_path / "hf_home"), TRANSFORMERS_VERBOSITY="error",
        OMP_NUM_THREADS="1",
    )  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_SCRIPT, str(work), json.dumps(families), json.dumps(TEXTS)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    outputs = load_file(work / "outputs.safetensors")
    expected_ids = saved["processor"](images=saved["images"][:1], text=TEXTS, padding=True, return_tensors="pt")
    for family in FAMILIES:
        assert torch.equal(outputs[family], saved_families[family]["output"]), family
        assert torch.equal(outputs[f"{family}_input_ids"], expected_ids["input_ids"]), family
    classes = json.loads((work / "classes.json").read_text())
    assert all(name.startswith("transformers_modules.") for name in classes), classes
    scores = json.loads((work / "zero_shot.json").read_text())
    expected = {t: round(float(p), 5) for t, p in zip(TEXTS, saved["output"][0].softmax(-1))}
    assert {s["label"]: round(s["score"], 5) for s in scores} == expected
    assert family_hub.unhandled == [] and family_hub.xet_requests == []


@pytest.fixture
def debug_logs(caplog):
    """Every log record of the libraries on the push path, at DEBUG, in `caplog`."""
    for name in ("", "huggingface_hub", "httpx2", "httpcore", "modeling_vlp", "transformers"):
        caplog.set_level(logging.DEBUG, logger=name)
    transformers_logger = logging.getLogger("transformers")  # does not propagate to the root logger
    transformers_logger.addHandler(caplog.handler)
    yield caplog
    transformers_logger.removeHandler(caplog.handler)


def test_push_command_never_shows_the_token(saved_dual, tmp_path, legacy_hub, capsys, debug_logs):
    caplog = debug_logs
    folder = copy_folder(saved_dual, tmp_path)
    # What a training run leaves beside the model: checkpoints, and TrainingArguments pickled with hub_token.
    (folder / "training_args.bin").write_bytes(b"pickle... hub_token=" + DEFAULT_TOKEN.encode())
    (folder / "checkpoint-2").mkdir()
    (folder / "checkpoint-2" / "optimizer.pt").write_bytes(b"state")
    status = push_command([
        str(folder), "cli-repo", "--hub-endpoint", legacy_hub.url, "--hub-token", DEFAULT_TOKEN, "--private",
        "--commit-message", "From the command line",
    ])  # fmt: skip
    captured = capsys.readouterr()
    assert status == 0, captured.err
    repo_id = f"{DEFAULT_USER}/cli-repo"
    pushed = legacy_hub.commits(repo_id)[-1]
    assert pushed.message == "From the command line" and legacy_hub.repo(repo_id).private
    assert set(pushed.added) == local_files(saved_dual["folder"]) | {"README.md"}
    assert pushed.oid in captured.out
    assert all(DEFAULT_TOKEN.encode() not in blob.data for blob in pushed.files.values())
    metadata, text = card_metadata(legacy_hub, repo_id)  # generated: the folder had no README.md
    assert metadata["pipeline_tag"] == "zero-shot-image-classification" and "model-index" not in metadata
    assert "not recorded" in text and "No evaluation results were recorded" in text
    # Private: invisible without the token.
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=legacy_hub.url, token=False).model_info(repo_id)
    assert HfApi(endpoint=legacy_hub.url, token=DEFAULT_TOKEN).model_info(repo_id).private

    # A wrong token fails with what to do, and is not shown either.
    wrong = "hf_wrong_token_that_must_stay_secret"
    status = push_command([str(folder), "cli-repo", "--hub-endpoint", legacy_hub.url, "--hub-token", wrong])
    failed = capsys.readouterr()
    assert status == 1 and "401" in failed.err and "HF_TOKEN" in failed.err
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "Request" in logged and "authenticated: True" in logged  # the client's debug logs were captured
    for token in (DEFAULT_TOKEN, wrong):
        assert token not in captured.out + captured.err + failed.out + failed.err + logged + caplog.text


# --------------------------------------------------------------------------------------------------------------
# Conversion scripts
# --------------------------------------------------------------------------------------------------------------


def test_convert_clip_pushes_a_card_with_the_measured_parity(tmp_path, legacy_hub, capsys):
    config = tiny_clip_config(max_position_embeddings=77)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(tmp_path / "source")  # no processor: the converter's defaults
    status = convert_clip.main([
        "--source", str(tmp_path / "source"), "--output", str(tmp_path / "converted"),
        "--push-to-hub", "tester/clip-tiny", "--hub-endpoint", legacy_hub.url, "--hub-token", DEFAULT_TOKEN,
        "--base-model", "openai/clip-vit-base-patch32", "--license", "mit",
    ])  # fmt: skip
    report = capsys.readouterr().out
    assert status == 0, report
    pushed = legacy_hub.commits("tester/clip-tiny")[-1]
    assert "model.safetensors" in pushed.lfs_paths and "README.md" in pushed.files
    metadata, text = card_metadata(legacy_hub, "tester/clip-tiny")
    assert metadata["base_model"] == "openai/clip-vit-base-patch32" and metadata["license"] == "mit"
    assert "converted" in metadata["tags"] and "model-index" not in metadata
    assert str(tmp_path) not in text  # the card names the source folder, not where it sat
    printed = dict(re.findall(r"^  (\w+)\s+max \|diff\| = (\S+)$", report.split("Processor:")[0], re.MULTILINE))
    in_card = dict(re.findall(r"^\| (\w+) \| (\S+) \|$", text, re.MULTILINE))
    assert set(printed) == {"logits_per_image", "image_embeds", "text_embeds"} and set(printed) <= set(in_card)
    for name, value in printed.items():
        assert float(in_card[name]) == pytest.approx(float(value), rel=1e-2, abs=1e-12), name
    assert "(tolerance 0.0001)" in text
    # The converted folder keeps the card it was pushed with.
    assert (tmp_path / "converted" / "README.md").read_bytes() == legacy_hub.file("tester/clip-tiny", "README.md")


def test_push_to_a_new_branch_leaves_main_alone(saved_dual, tmp_path, legacy_hub):
    folder = copy_folder(saved_dual, tmp_path)
    hub.push_folder(folder, "tester/branches", endpoint=legacy_hub.url, token=DEFAULT_TOKEN, revision="dev")
    repo = legacy_hub.repo("tester/branches")
    assert set(legacy_hub.files("tester/branches", "main")) == {".gitattributes"}
    assert set(legacy_hub.files("tester/branches", "dev")) == local_files(folder) | {".gitattributes"}
    assert repo.commits[repo.branches["dev"]].parent == repo.branches["main"]


def test_base_model_from_a_hub_cache_path():
    snapshot = "/cache/hub/models--openai--clip-vit-base-patch32/snapshots/3d74acf9a28c67741b2f4f2ea7635f0aaf6f0268"
    assert hub.base_model_from_path(snapshot) == "openai/clip-vit-base-patch32"
    assert hub.base_model_from_path("/data/my-clip") is None


# --------------------------------------------------------------------------------------------------------------
# Failures
# --------------------------------------------------------------------------------------------------------------


def test_an_lfs_upload_dropped_once_is_retried(saved_dual, tmp_path, legacy_hub):
    legacy_hub.drop_connection("PUT", r"^/lfs-upload/")
    folder = copy_folder(saved_dual, tmp_path)
    hub.push_folder(folder, "tester/dropped", endpoint=legacy_hub.url, token=DEFAULT_TOKEN)
    assert len(legacy_hub.dropped) == 1
    commits = legacy_hub.commits("tester/dropped")
    assert len(commits) == 2 and commits[-1].lfs_paths == {"model.safetensors", "spiece.model"}
    assert commits[-1].files["model.safetensors"].data == (folder / "model.safetensors").read_bytes()


def test_a_commit_dropped_once_leaves_no_commit(saved_dual, tmp_path, local_hub, client_mode):
    local_hub.drop_connection("POST", r"/commit/")
    folder = copy_folder(saved_dual, tmp_path)
    if client_mode == "lfs":  # create_commit does not retry a commit: a clear error, and nothing half-written
        with pytest.raises(hub.HubPushError, match="connection to the Hub failed.*push again"):
            hub.push_folder(folder, "tester/interrupted", endpoint=local_hub.url, token=DEFAULT_TOKEN)
        assert [c.message for c in local_hub.commits("tester/interrupted")] == ["initial commit"]
    # The pipelined (default) client retries the commit itself; pushing again finishes the legacy one.
    hub.push_folder(folder, "tester/interrupted", endpoint=local_hub.url, token=DEFAULT_TOKEN)
    assert len(local_hub.dropped) == 1
    initial, pushed = local_hub.commits("tester/interrupted")
    assert set(pushed.files) == local_files(folder) | {".gitattributes"}


def test_the_server_checks_lfs_objects_and_refuses_commits_naming_missing_ones(legacy_hub):
    import hashlib

    api = HfApi(endpoint=legacy_hub.url, token=DEFAULT_TOKEN)
    api.create_repo("tester/strict")
    session, auth = get_session(), {"Authorization": f"Bearer {DEFAULT_TOKEN}"}
    content = b"weights"
    oid = hashlib.sha256(content).hexdigest()
    batch = session.post(
        f"{legacy_hub.url}/tester/strict.git/info/lfs/objects/batch", headers=auth,
        json={"operation": "upload", "transfers": ["basic"], "objects": [{"oid": oid, "size": len(content)}]},
    ).json()  # fmt: skip
    assert batch["transfer"] == "basic" and "xet" not in json.dumps(batch).lower()
    upload = batch["objects"][0]["actions"]["upload"]["href"]
    assert session.put(upload, content=b"tampered").status_code == 400  # size and sha256 are checked

    def commit(oid: str):
        line = {"key": "lfsFile", "value": {"path": "model.safetensors", "algo": "sha256", "oid": oid, "size": 7}}
        body = "\n".join(json.dumps(x) for x in ({"key": "header", "value": {"summary": "sneaky"}}, line))
        headers = {**auth, "Content-Type": "application/x-ndjson"}
        return session.post(f"{legacy_hub.url}/api/models/tester/strict/commit/main", content=body, headers=headers)

    for missing in ("0" * 64, oid):  # never announced; announced but its upload was refused
        reply = commit(missing)
        assert reply.status_code == 400 and "never uploaded" in reply.json()["error"]
    assert len(legacy_hub.commits("tester/strict")) == 1


def test_pushing_to_an_existing_repo_without_exist_ok(saved_dual, tmp_path, legacy_hub, capsys):
    folder = copy_folder(saved_dual, tmp_path)
    hub.push_folder(folder, "tester/taken", endpoint=legacy_hub.url, token=DEFAULT_TOKEN)
    with pytest.raises(hub.HubPushError, match="exists already.*--exist-ok"):
        hub.push_folder(folder, "tester/taken", endpoint=legacy_hub.url, token=DEFAULT_TOKEN, exist_ok=False)
    argv = [str(folder), "tester/taken", "--hub-endpoint", legacy_hub.url, "--hub-token", DEFAULT_TOKEN]
    assert push_command(argv + ["--no-exist-ok"]) == 1
    assert "exists already" in capsys.readouterr().err
    assert len(legacy_hub.commits("tester/taken")) == 2


def test_pushing_without_a_token_says_how_to_give_one(saved_dual, tmp_path, legacy_hub):
    folder = copy_folder(saved_dual, tmp_path)
    with pytest.raises(hub.HubPushError) as error:
        hub.push_folder(folder, "tester/anonymous", endpoint=legacy_hub.url)
    message = str(error.value)
    assert "no token was found" in message
    assert "HF_TOKEN" in message and "--hub-token" in message and "hf auth login" in message
    assert legacy_hub.repos == {}


def test_the_default_client_needs_xet_where_the_server_says_lfs(saved_dual, tmp_path, monkeypatch):
    """huggingface_hub 2.x with hf_xet sends "lfs" files through Xet whatever the server says; this server never
    offers Xet, so the push fails before any commit, with the way out."""
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)
    folder = copy_folder(saved_dual, tmp_path)
    with LocalHub(upload_mode="lfs") as server:
        with pytest.raises(hub.HubPushError, match="HF_HUB_DISABLE_XET=1"):
            hub.push_folder(folder, "tester/xet", endpoint=server.url, token=DEFAULT_TOKEN)
        assert server.xet_requests and len(server.commits("tester/xet")) == 1


# --------------------------------------------------------------------------------------------------------------
# Model cards for every family, and the Trainer's push
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config, pipeline_tag",
    [
        (dict(model_type="vlp_unified", architectures=["VLPUnifiedForQuestionAnswering"], visual_input="patches",
              hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8,
              vocab_size=99, max_position_embeddings=16), "visual-question-answering"),
        (dict(model_type="vlp_unified", architectures=["VLPUnifiedForPreTraining"], visual_input="regions",
              hidden_size=32, num_hidden_layers=2, num_attention_heads=4, visual_feat_dim=64, vocab_size=99,
              max_position_embeddings=16), "feature-extraction"),
        (dict(model_type="vlp_fusion", architectures=["VLPFusionForPreTraining"], fusion_type="co_attention",
              num_fusion_layers=2, visual_input="regions", visual_feat_dim=64,
              text_config=dict(model_type="vlp_text", num_hidden_layers=2, hidden_size=32),
              vision_config=dict(model_type="vlp_vision", num_hidden_layers=1, hidden_size=32)),
         "feature-extraction"),
    ],
)  # fmt: skip
def test_cards_of_the_other_families(tmp_path, config, pipeline_tag):
    config["auto_map"] = {"AutoModel": "modeling_x.Base", "AutoModelForX": f"modeling_x.{config['architectures'][0]}"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    card = hub.build_model_card(tmp_path, kind=None, repo_id="tester/other")
    assert card.data.pipeline_tag == pipeline_tag and config["model_type"] in card.data.tags
    assert card.data.eval_results is None and "model-index" not in str(card)
    assert "AutoModelForX.from_pretrained" in card.text and "not recorded" in card.text
    assert ("detector region features" in card.text) == (config["visual_input"] == "regions")


def test_trainer_push_to_hub_pushes_our_card(saved_dual, tmp_path, monkeypatch, legacy_hub):
    import transformers.utils.hub

    # The Trainer pushes through transformers' shared HfApi, whose endpoint comes from HF_ENDPOINT at import.
    monkeypatch.setattr(transformers.utils.hub, "_hf_api", HfApi(endpoint=legacy_hub.url, library_name="transformers"))
    model = VLPDualEncoderModel.from_pretrained(saved_dual["folder"])
    processor = AutoProcessor.from_pretrained(saved_dual["folder"])
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"), hub_model_id="trainer-run", hub_token=DEFAULT_TOKEN, report_to="none",
        use_cpu=True, per_device_train_batch_size=8,
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, processing_class=processor)
    trainer.state.global_step, trainer.state.train_batch_size = 3, 8
    trainer.state.log_history = [{"loss": 2.5, "loss_itc": 2.5, "step": 2}, {"loss": 2.25, "loss_itc": 2.25, "step": 3}]
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, hub.EVAL_RESULTS_NAME), "w") as handle:
        json.dump(EVAL_RESULTS, handle)

    hub.use_model_card(trainer, dataset="scenes", dataset_description="generated shapes")
    trainer.push_to_hub(commit_message="End of training")
    repo_id = f"{DEFAULT_USER}/trainer-run"
    pushed = legacy_hub.commits(repo_id)[-1]
    assert pushed.message == "End of training" and "model.safetensors" in pushed.lfs_paths
    metadata, text = card_metadata(legacy_hub, repo_id)
    assert "itc" in metadata["tags"] and "modeling_vlp" in metadata["tags"]
    measured = {m["type"]: m["value"] for r in metadata["model-index"][0]["results"] for m in r["metrics"]}
    assert measured["i2t_r@1"] == EVAL_RESULTS["i2t_r@1"] and "global_step" not in measured
    assert "Optimizer steps: 3" in text and "Last logged training loss: 2.25" in text and "generated shapes" in text
    assert "More information needed" not in text  # not the Trainer's generated card
    # TrainingArguments pickle hub_token into training_args.bin, which the Trainer pushes: not with our hook.
    assert "training_args.bin" in pushed.files
    assert all(DEFAULT_TOKEN.encode() not in blob.data for blob in pushed.files.values())
    assert legacy_hub.unhandled == []
    # The same card from the files a run leaves behind (`vlp push` of the output folder).
    trainer.save_state()
    card = hub.model_card_for_run(args.output_dir, repo_id=repo_id, dataset="scenes",
                                  dataset_description="generated shapes")  # fmt: skip
    assert card.data.to_dict() == metadata and card.text == text


def test_vlp_pretrain_pushes_the_run_with_what_it_measured(tmp_path, legacy_hub, monkeypatch):
    from modeling_vlp.commands import main

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    output_dir = tmp_path / "run"
    status = main([
        "pretrain", "--family", "dual", "--preset", "dual-tiny", "--num-train", "32", "--num-validation", "8",
        "--per-device-train-batch-size", "8", "--max-steps", "2", "--vocab-size", "120", "--save-steps", "2",
        "--output-dir", str(output_dir), "--push-to-hub", "tester/dual-run", "--hub-endpoint", legacy_hub.url,
        "--hub-token", DEFAULT_TOKEN, "--commit-message", "a tiny run",
    ])  # fmt: skip
    assert status == 0
    commit = legacy_hub.commits("tester/dual-run")[-1]
    assert commit.message == "a tiny run"
    assert {"config.json", "model.safetensors", "README.md", "eval_results.json"} <= set(commit.files)
    assert not any(path.startswith("checkpoint-") for path in commit.files)
    metadata, text = card_metadata(legacy_hub, "tester/dual-run")
    measured = json.loads((output_dir / "eval_results.json").read_text())
    results = {
        metric["type"]: metric["value"]
        for entry in metadata["model-index"][0]["results"] for metric in entry["metrics"]
    }  # fmt: skip
    assert results and all(measured[name] == pytest.approx(value) for name, value in results.items())
    assert "itc" in metadata["tags"] and metadata["pipeline_tag"] == "zero-shot-image-classification"
    # The token went to the client only: not into the run's files (TrainingArguments never saw it) nor the card.
    for path in output_dir.rglob("*"):
        if path.is_file():
            assert DEFAULT_TOKEN.encode() not in path.read_bytes(), path
