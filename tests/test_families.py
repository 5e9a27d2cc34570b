"""Every family through every path that reads its description (`modeling_vlp.families.FAMILIES`): `vlp pretrain`
(config, objectives, collator, evaluation), `vlp finetune` where it has a VQA head, `vlp evaluate` on each of its
tasks, the model card and push, and its pipeline. A family missing a field, or a field that names a class, task or
objective nobody implements, fails here by name."""

import json
from dataclasses import fields

import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from transformers import pipeline

import modeling_vlp  # noqa: F401  (registers the Auto classes and pipelines)
from hub_server import DEFAULT_TOKEN
from modeling_vlp import get_preset_config
from modeling_vlp.commands import main
from modeling_vlp.commands.evaluate import TASKS
from modeling_vlp.families import FAMILIES, Family
from modeling_vlp.hub import model_card_for_run, push_folder
from modeling_vlp.registration import MODEL_CLASSES
from modeling_vlp.training.family_objectives import OBJECTIVE_DESCRIPTIONS, OBJECTIVES

pytestmark = pytest.mark.usefixtures("one_thread")

RUN = [
    "--num-train", "16", "--num-validation", "8", "--per-device-train-batch-size", "8",
    "--per-device-eval-batch-size", "8", "--vocab-size", "200", "--max-steps", "2", "--logging-steps", "1",
    "--save-steps", "100", "--dataloader-num-workers", "0",
]  # fmt: skip
ROLES = ("base", "pretraining", "question_answering", "retrieval", "generation")
# The Hub pipeline tag of each checkpoint the walk pushes: what the stock or our pipeline of that name runs.
PIPELINE_TAGS = {
    ("dual", "pretraining"): "zero-shot-image-classification",
    ("unified", "pretraining"): "feature-extraction",
    ("unified", "question_answering"): "visual-question-answering",
    ("fusion", "pretraining"): "feature-extraction",
    ("fusion", "question_answering"): "visual-question-answering",
    ("captioning", "pretraining"): "image-text-to-text",
}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_the_description_is_complete_and_consistent(name):
    family = FAMILIES[name]
    for field in fields(Family):
        value = getattr(family, field.name)
        assert value is not None or field.default is None, f"{name}: {field.name} is unset"
    assert family.name == name
    assert {"base", "pretraining"} <= set(family.classes) <= set(ROLES), f"{name}: classes {sorted(family.classes)}"
    for role, model_class in family.classes.items():
        assert MODEL_CLASSES[model_class.__name__] is model_class, f"{name}: {role} class is not registered"
        assert model_class.config_class.model_type == family.model_type, f"{name}: {role} class of another family"
    assert get_preset_config(family.default_preset).model_type == family.model_type
    assert set(family.default_objectives) <= set(family.objectives) <= set(OBJECTIVE_DESCRIPTIONS)
    assert OBJECTIVES[family.model_type] == dict(family.objectives), f"{name}: trainer objectives not registered"
    assert set(family.evaluation_tasks) <= set(TASKS), f"{name}: unknown tasks {sorted(family.evaluation_tasks)}"
    assert set(family.evaluation_tasks.values()) <= set(family.classes), f"{name}: evaluation class roles"
    assert "*" in family.pipeline_tags and set(family.pipeline_tags) - {"*"} <= set(family.classes)
    assert family.retrieval_ranking in (None, "embeddings", "rerank", "match")
    assert set(family.retrieval_roles) <= set(family.classes) and bool(family.retrieval_roles) == bool(
        family.retrieval_ranking
    ), f"{name}: retrieval_roles without a ranking, or the reverse"
    assert family.describe(get_preset_config(family.default_preset).to_dict()), f"{name}: no card text"


def _images(count: int, size: int) -> list[Image.Image]:
    generator = torch.Generator().manual_seed(0)
    return [
        Image.fromarray((torch.rand(size, size, 3, generator=generator) * 255).to(torch.uint8).numpy())
        for _ in range(count)
    ]


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.slow  # pretrains (and fine-tunes) each family: about 20 s a family
@pytest.mark.parametrize("name", list(FAMILIES))
def test_each_family_pretrains_evaluates_pushes_and_runs_its_pipeline(name, tmp_path, capsys, hub):
    family = FAMILIES[name]
    output = tmp_path / "pretrained"
    assert main(["pretrain", "--family", name, "--preset", f"{name}-tiny", *RUN, "--output-dir", str(output)]) == 0
    metrics = _last_json(capsys)
    assert metrics["global_step"] == 2.0
    config = json.loads((output / "config.json").read_text())
    assert config["model_type"] == family.model_type
    assert config["architectures"] == [family.model_class.__name__]
    state = json.loads((output / "trainer_state.json").read_text())
    logged = {key[len("loss_") :] for entry in state["log_history"] for key in entry if key.startswith("loss_")}
    assert logged == set(family.default_objectives), f"{name}: trained {sorted(logged)}"

    checkpoints = {"pretraining": output}
    if family.question_answering_class is not None:
        finetuned = tmp_path / "vqa"
        assert main([
            "finetune", "--task", "vqa", "--model", str(output), "--output-dir", str(finetuned), "--num-train", "8",
            "--num-validation", "8", "--max-steps", "1", "--per-device-train-batch-size", "8",
            "--per-device-eval-batch-size", "8", "--logging-steps", "1",
        ]) == 0  # fmt: skip
        capsys.readouterr()
        checkpoints["question_answering"] = finetuned

    for task, role in family.evaluation_tasks.items():
        checkpoint = checkpoints["question_answering" if role == "question_answering" else "pretraining"]
        assert main(["evaluate", "--model", str(checkpoint), "--task", task, "--max-examples", "4",
                     "--output-dir", str(tmp_path / f"eval-{task}")]) == 0  # fmt: skip
        result = _last_json(capsys)
        assert result["task"] == task and result["num_images"] > 0, f"{name}: {task}"

    for role, checkpoint in checkpoints.items():
        repo_id = f"tester/{name}-{role}"
        card = model_card_for_run(checkpoint, repo_id=repo_id)
        push_folder(checkpoint, repo_id, endpoint=hub.url, token=DEFAULT_TOKEN, model_card=card)
        pushed = ModelCard(hub.file(repo_id, "README.md").decode())
        saved_class = json.loads((checkpoint / "config.json").read_text())["architectures"][0]
        assert pushed.data.pipeline_tag == family.pipeline_tag(saved_class) == PIPELINE_TAGS[name, role], role
        assert family.summary in pushed.text and family.model_type in pushed.data.tags

    image_size = family.image_size(get_preset_config(f"{name}-tiny"))
    images, texts = _images(2, image_size), ["a red square", "a blue circle"]
    if family.retrieval_ranking is not None:
        retriever = pipeline("image-text-retrieval", model=str(output))
        ranked = retriever(images=images, texts=texts, top_k=1)
        assert retriever.family == name and len(ranked["image_to_text"]) == 2 and len(ranked["text_to_image"]) == 2
    if "generation" in family.classes:
        captioner = pipeline("image-text-to-text", model=str(output))
        assert isinstance(captioner(images[0], max_new_tokens=4)[0]["generated_text"], str)
    if "question_answering" in checkpoints:
        answerer = pipeline("visual-question-answering", model=str(checkpoints["question_answering"]))
        assert answerer(image=images[0], question="what colour is the square?", top_k=1)[0]["answer"]
