# Tasks: official files (or hf:...) -> normalised JSONL splits + task.json (prompt, answer strings).


rule prepare_task:
    input:
        lambda w: list(PLAN.tasks[w.task].inputs),
    output:
        directory(f"{R}/tasks/{{task}}"),
    log:
        f"{R}/logs/prepare_task/{{task}}.log",
    conda:
        "../../envs/kdflow.yaml"
    threads: rule_threads("prepare_task", 1)
    resources:
        **rule_resources("prepare_task", mem_mb=4000),
    params:
        spec=lambda w: as_json(config["tasks"][w.task]),
        source=lambda w: PLAN.tasks[w.task].source,
        required=lambda w: " ".join(PLAN.tasks[w.task].splits),
    shell:
        "kdflow prepare-task --name {wildcards.task} --spec {params.spec:q} "
        "--source {params.source:q} --require {params.required} --out {output} > {log} 2>&1"
