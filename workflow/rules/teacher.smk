# Teacher: prompt fine-tuning per task, and the logit cache (corpus = stage 1, task = stage 2).


rule finetune_teacher:
    input:
        teacher=model_dir(PLAN.teacher),
        task=f"{R}/tasks/{{task}}",
    output:
        directory(f"{R}/teachers/{{task}}"),
    log:
        f"{R}/logs/finetune_teacher/{{task}}.log",
    benchmark:
        f"{R}/benchmarks/finetune_teacher/{{task}}.tsv"
    conda:
        "../../envs/kdflow.yaml"
    threads: rule_threads("finetune_teacher")
    resources:
        **rule_resources("finetune_teacher"),
    params:
        work=lambda w: f"{R}/work/finetune_teacher/{w.task}",
        settings=lambda w: as_json(task_settings(config["teacher_finetune"], w.task)),
        deepspeed=as_json(config["deepspeed"]),
        seed=config["seed"],
        launcher=launcher("finetune_teacher"),
        compute=compute_args("finetune_teacher"),
    shell:
        "{params.launcher} finetune-teacher --teacher {input.teacher} --task {input.task} --out {output} "
        "--work {params.work} --settings {params.settings:q} --deepspeed {params.deepspeed:q} "
        "--seed {params.seed} {params.compute} > {log} 2>&1"


rule finetune_classifier:
    input:
        model=lambda w: model_dir(w.classifier),
        task=f"{R}/tasks/{{task}}",
    output:
        directory(f"{R}/classifiers/{{classifier}}/{{task}}"),
    log:
        f"{R}/logs/finetune_classifier/{{classifier}}/{{task}}.log",
    benchmark:
        f"{R}/benchmarks/finetune_classifier/{{classifier}}/{{task}}.tsv"
    conda:
        "../../envs/kdflow.yaml"
    threads: rule_threads("finetune_classifier")
    resources:
        **rule_resources("finetune_classifier"),
    params:
        work=lambda w: f"{R}/work/finetune_classifier/{w.classifier}/{w.task}",
        settings=lambda w: as_json(task_settings(config["classifier_finetune"], w.task)),
        deepspeed=as_json(config["deepspeed"]),
        seed=config["seed"],
        launcher=launcher("finetune_classifier"),
        compute=compute_args("finetune_classifier"),
    shell:
        "{params.launcher} finetune-teacher --head classification --teacher {input.model} --task {input.task} "
        "--out {output} --work {params.work} --settings {params.settings:q} "
        "--deepspeed {params.deepspeed:q} --seed {params.seed} {params.compute} > {log} 2>&1"


rule cache_logits_corpus:
    input:
        unpack(cache_inputs),
        corpus=f"{R}/corpus/{{corpus}}",
    output:
        f"{R}/cache/corpus/{{corpus}}/{{vocab}}/manifest.json",
    log:
        f"{R}/logs/cache_logits_corpus/{{corpus}}/{{vocab}}.log",
    benchmark:
        f"{R}/benchmarks/cache_logits_corpus/{{corpus}}/{{vocab}}.tsv"
    conda:
        "../../envs/kdflow.yaml"
    threads: rule_threads("cache_logits_corpus")
    resources:
        **rule_resources("cache_logits_corpus"),
    params:
        out=lambda w: f"{R}/cache/corpus/{w.corpus}/{w.vocab}",
        settings=as_json(cache_settings(config)),
        launcher=launcher("cache_logits_corpus"),
        compute=compute_args("cache_logits_corpus"),
        seed=config["seed"],
    shell:
        "{params.launcher} cache-logits --teacher {input.teacher} --corpus {input.corpus} --vocab-map '{input.vmap}' "
        "--settings {params.settings:q} --out {params.out} --seed {params.seed} {params.compute} > {log} 2>&1"


rule cache_logits_task:
    input:
        unpack(cache_inputs),
        task=f"{R}/tasks/{{task}}",
    output:
        f"{R}/cache/task/{{task}}/{{vocab}}/manifest.json",
    log:
        f"{R}/logs/cache_logits_task/{{task}}/{{vocab}}.log",
    benchmark:
        f"{R}/benchmarks/cache_logits_task/{{task}}/{{vocab}}.tsv"
    conda:
        "../../envs/kdflow.yaml"
    threads: rule_threads("cache_logits_task")
    resources:
        **rule_resources("cache_logits_task"),
    params:
        out=lambda w: f"{R}/cache/task/{w.task}/{w.vocab}",
        settings=task_cache_settings,
        launcher=launcher("cache_logits_task"),
        compute=compute_args("cache_logits_task"),
    shell:
        "{params.launcher} cache-logits --teacher {input.teacher} --task {input.task} --vocab-map '{input.vmap}' "
        "--settings {params.settings:q} --out {params.out} {params.compute} > {log} 2>&1"
