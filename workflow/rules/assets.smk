# Embedded real assets (models, corpus, sentiment task) -> plain files the rest of the DAG consumes.


rule build_model:
    input:
        lambda w: list(PLAN.models[w.model].local_source),
    output:
        directory(f"{R}/assets/models/{{model}}"),
    log:
        f"{R}/logs/build_model/{{model}}.log",
    benchmark:
        f"{R}/benchmarks/build_model/{{model}}.tsv"
    conda:
        "../../envs/kdflow.yaml"
    threads: rule_threads("build_model")
    resources:
        **rule_resources("build_model"),
    params:
        spec=lambda w: as_json(config["models"][w.model]),
        source_state=model_source_state,
        seed=config["seed"],
    shell:
        "kdflow build-model --spec {params.spec:q} --out {output} --seed {params.seed} > {log} 2>&1"


rule build_corpus:
    output:
        corpus=f"{R}/assets/corpora/{{corpus}}.jsonl",
        provenance=f"{R}/assets/corpora/{{corpus}}.provenance.json",
    log:
        f"{R}/logs/build_corpus/{{corpus}}.log",
    conda:
        "../../envs/kdflow.yaml"
    threads: rule_threads("build_corpus", 1)
    resources:
        **rule_resources("build_corpus", mem_mb=2000),
    params:
        source=lambda w: config["corpora"][w.corpus]["source"],
    shell:
        "kdflow build-corpus --source {params.source:q} --out {output.corpus} > {log} 2>&1"


rule build_task:
    output:
        directory(f"{R}/assets/tasks/{{task}}"),
    log:
        f"{R}/logs/build_task/{{task}}.log",
    conda:
        "../../envs/kdflow.yaml"
    threads: rule_threads("build_task", 1)
    resources:
        **rule_resources("build_task", mem_mb=2000),
    params:
        source=lambda w: config["tasks"][w.task]["source"],
        seed=config["seed"],
    shell:
        "kdflow build-task --source {params.source:q} --out {output} --seed {params.seed} > {log} 2>&1"
