# Evaluation: a model x a prepared task -> official dev metrics (+ bootstrap CI), predictions, size and speed.


rule evaluate:
    input:
        model=lambda w: model_dir(w.model, w.task),
        task=f"{R}/tasks/{{task}}",
    output:
        metrics=f"{R}/metrics/{{model}}/{{task}}.json",
        predictions=f"{R}/predictions/{{model}}/{{task}}.jsonl",
        efficiency=f"{R}/efficiency/{{model}}/{{task}}.json",
    log:
        f"{R}/logs/evaluate/{{model}}/{{task}}.log",
    benchmark:
        f"{R}/benchmarks/evaluate/{{model}}/{{task}}.tsv"
    conda:
        "../../envs/kdflow.yaml"
    threads: rule_threads("evaluate")
    resources:
        **rule_resources("evaluate"),
    params:
        settings=as_json(scoring_settings(config)),
        seed=config["seed"],
        compute=compute_args("evaluate"),
    shell:
        "kdflow evaluate --model {input.model} --task {input.task} --out {output.metrics} "
        "--predictions {output.predictions} --efficiency {output.efficiency} --settings {params.settings:q} --seed {params.seed} "
        "{params.compute} > {log} 2>&1"


rule submit:
    input:
        model=lambda w: model_dir(w.model, w.task),
        task=f"{R}/tasks/{{task}}",
    output:
        directory(f"{R}/submissions/{{model}}/{{task}}"),
    log:
        f"{R}/logs/submit/{{model}}/{{task}}.log",
    benchmark:
        f"{R}/benchmarks/submit/{{model}}/{{task}}.tsv"
    conda:
        "../../envs/kdflow.yaml"
    threads: rule_threads("submit")
    resources:
        **rule_resources("submit"),
    params:
        settings=as_json(scoring_settings(config)),
        compute=compute_args("submit"),
    shell:
        "kdflow submit --model {input.model} --task {input.task} --out {output} "
        "--settings {params.settings:q} {params.compute} > {log} 2>&1"
