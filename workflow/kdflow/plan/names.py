"""The naming scheme of models and the defaults resolved from a config, on plain config mappings (so that
config validation can use them before a plan exists)."""

from __future__ import annotations

from typing import Any

from ..data.tasks import TASKS

FINETUNED = "teacher_finetuned"  # model name of the teacher fine-tuned on each task
RUNS = "runs/"  # model name prefix of a run's students: runs/RUN
CLASSIFIERS = "classifiers/"  # model name prefix of an encoder fine-tuned with a head: classifiers/MODEL
RESERVED_MODEL_NAMES = {
    FINETUNED: "the teacher fine-tuned on each task",
    RUNS.rstrip("/"): "the runs' students",
    CLASSIFIERS.rstrip("/"): "the encoders fine-tuned with a classification head",
}


def run_model(run: str) -> str:
    """The model name of a run's students (one per task)."""
    return f"{RUNS}{run}"


def classifier_model(model: str) -> str:
    """The model name of ``model`` fine-tuned with a classification head (one per task)."""
    return f"{CLASSIFIERS}{model}"


def run_of(model: str) -> str | None:
    """The run whose students ``model`` names, else None."""
    return model.removeprefix(RUNS) if model.startswith(RUNS) else None


def model_folder(results: str, name: str, task: str | None = None) -> str:
    """An asset model's folder, or the folder of a per-task model (fine-tuned teacher, classifier, run) on ``task``."""
    if name == FINETUNED:
        return f"{results}/teachers/{task}"
    if name.startswith((RUNS, CLASSIFIERS)):
        return f"{results}/{name}/{task}"
    return f"{results}/assets/models/{name}"


def seeds(config: dict[str, Any]) -> list[int]:
    """The training seeds: `seeds`, else the experiment's `seed`."""
    return list(config.get("seeds") or [config["seed"]])


def run_instances(config: dict[str, Any]) -> dict[str, tuple[str, int]]:
    """Every trained run by name, with its configured run and its seed: each run once per seed, the first
    seed under the run's own name, the others as `RUN.seedS`."""
    first, *others = seeds(config)
    out: dict[str, tuple[str, int]] = {}
    for run in config.get("runs", {}):
        out[run] = (run, first)
        out.update({f"{run}.seed{s}": (run, s) for s in others})
    return out


def run_spec(config: dict[str, Any], run: str) -> dict[str, Any]:
    """The config entry of a run (of the run a seed instance repeats)."""
    return config["runs"][run_instances(config)[run][0]]


def run_tasks(config: dict[str, Any], run: str) -> list[str]:
    """The tasks a run (or a seed instance of it) distils on: its own `tasks`, else every task of distill.tasks."""
    spec = config["runs"][run] if run in config["runs"] else run_spec(config, run)
    return list(spec.get("tasks") or config["distill"]["tasks"])


def compare_with(config: dict[str, Any]) -> list[str]:
    """The baseline runs of the paired comparisons: `evaluate.compare_with`, else no_distill and kd where present."""
    chosen = config["evaluate"].get("compare_with")
    return list(chosen) if chosen is not None else [r for r in ("no_distill", "kd") if r in config.get("runs", {})]


def model_names(config: dict[str, Any]) -> list[str]:
    """Every model name of an experiment: the assets, the fine-tuned teacher, the classifiers and the runs."""
    return [
        *config.get("models", {}),
        FINETUNED,
        *(run_model(r) for r in run_instances(config)),
        *(classifier_model(m) for m in config.get("classifier_finetune", {}).get("models", [])),
    ]


def evaluable(spec: dict[str, Any]) -> bool:
    """Whether `evaluate` can score a task entry: its dev split (or the split `splits.dev` reads) is labelled,
    or, without a dev split, its release labels the test file (AX-b, AX-g); GLUE AX cannot be scored."""
    task = TASKS[spec["name"]]
    origin = (spec.get("splits") or {}).get("dev")
    if origin is not None:
        return origin in task.files and task.labelled(origin)
    return task.eval_split is not None


def student_teacher(config: dict[str, Any], student: str) -> str:
    """The model a student is cut from and taught by."""
    return config["students"][student].get("teacher") or config["teacher"]


def corpus_tokenizer(config: dict[str, Any], corpus: str) -> str:
    """The model whose tokenizer tokenises ``corpus``: its own, `preprocess.tokenizer_model`, else the teacher."""
    own = config["corpora"][corpus].get("tokenizer_model")
    return own or config.get("preprocess", {}).get("tokenizer_model") or config["teacher"]


def first_corpus_of(config: dict[str, Any], teacher: str) -> str | None:
    """The first corpus tokenised by ``teacher``'s tokenizer, else the first corpus (None without corpora)."""
    corpora = list(config.get("corpora", {}))
    return next((c for c in corpora if corpus_tokenizer(config, c) == teacher), corpora[0] if corpora else None)


def stage1_corpus(config: dict[str, Any], run: str) -> str | None:
    """A run's stage-1 corpus: its own, distill.corpus, else the first corpus tokenised for its teacher."""
    spec = run_spec(config, run)
    explicit = spec.get("stage1", {}).get("corpus") or config.get("distill", {}).get("corpus")
    return explicit or first_corpus_of(config, student_teacher(config, spec["student"]))


def vocab_corpus(config: dict[str, Any], vocab: str) -> str | None:
    """The corpus whose counts rank a vocabulary: its own, else the first corpus tokenised by the teacher."""
    return config["vocabularies"][vocab].get("corpus") or first_corpus_of(config, config["teacher"])


def task_teacher_name(config: dict[str, Any], task: str) -> str:
    """The teacher of a task: fine-tuned on it when teacher_finetune lists it, else the base teacher."""
    return FINETUNED if task in config["teacher_finetune"]["tasks"] else config["teacher"]


def stage2_teacher_name(config: dict[str, Any], run: str, task: str) -> str:
    """A run's stage-2 teacher on ``task``: a classification-head teacher (encoder track), the teacher of the
    task (fine-tuned or not) for students of the base teacher, else the student's own teacher."""
    teacher = student_teacher(config, run_spec(config, run)["student"])
    if teacher in config["classifier_finetune"]["models"]:
        return classifier_model(teacher)
    return task_teacher_name(config, task) if teacher == config["teacher"] else teacher


def stage_phases(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """A stage's loss specs in training order: its ``phases`` one after the other, or ``losses`` alone."""
    return [phase["losses"] for phase in spec["phases"]] if "phases" in spec else [spec["losses"]]


def phase_training(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Each phase's own training settings (`phases[i].training`) over the stage's, in training order."""
    return [phase.get("training", {}) for phase in spec["phases"]] if "phases" in spec else [{}]
